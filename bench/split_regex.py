"""The engine's split regexes grouped (`engine._grouped`) against the pre-tokenizers' own order.

    python3 -m bench.split_regex [--records 20000] [--repeats 3] [--json FILE]

For each corpus (rendered as the benchmark renders it) and each pre-tokenizer the engine knows,
tiktoken encodes the same batches twice: with the alternatives joined in the pre-tokenizer's
order, and with the regex the engine uses (`PATTERNS`). Both use the default tokenizer's ranks
and added tokens and the engine's batching (texts joined by its separator, 1024 per call, one
thread). It reports CPU µs per record, the best of `--repeats` alternating passes, and checks
that both give the same ids.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Dict, List

import tiktoken

from bench import corpora
from bench.harness import TEMPLATES, prepare_tokenizer
from sftprep.tokenizer import engine
from sftprep.tokenizer.load import load_tokenizer_source
from sftprep.transforms.prepare import PrepareSettings, conversation_of
from sftprep.transforms.read import iter_raw_records
from sftprep.transforms.records import Rejection
from sftprep.transforms.templates import TemplateSpec

# Each pre-tokenizer's alternatives in its own order (what the tokenizer itself runs).
ORDERED = {"deepseek (default)": engine._DEEPSEEK_PATTERN, "llama3": engine._LLAMA3_SPLIT,
           "qwen2": engine._QWEN2_SPLIT, "gpt2": engine._GPT2_PATTERN}
GROUPED = {"deepseek (default)": engine.PATTERNS[engine._DEEPSEEK_SPLITS],
           "llama3": engine.PATTERNS[(engine._LLAMA3_SPLIT,)],
           "qwen2": engine.PATTERNS[(engine._QWEN2_SPLIT,)],
           "gpt2": engine.PATTERNS[(engine._GPT2_BYTE_LEVEL,)]}


def rendered_texts(kind: str, records: int, work: pathlib.Path) -> List[str]:
    corpus = corpora.build(kind, records, work)
    source = load_tokenizer_source(str(prepare_tokenizer(TEMPLATES[kind], work)))
    settings = PrepareSettings(template=TemplateSpec(TEMPLATES[kind], bos=source.bos,
                                                     eos=source.eos))
    with open(corpus, "rb") as stream:
        outcomes = [conversation_of(r, settings)
                    for r in iter_raw_records(str(corpus), stream, 1 << 26)]
    return [o[1].text for o in outcomes if not isinstance(o, Rejection)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.split_regex")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(pathlib.Path(__file__).parent / "work"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    for kind in ("pc", "chat"):
        texts = rendered_texts(kind, args.records, work)
        tokenizer_json = (prepare_tokenizer(TEMPLATES[kind], work) / "tokenizer.json").read_text()
        base = engine.FastBPE.for_tokenizer(tokenizer_json)
        batches = [engine.FastBPE._SEPARATOR.join(texts[i:i + 1024])
                   for i in range(0, len(texts), 1024)]
        for family in ORDERED:
            cores = {form: tiktoken.Encoding(
                form, pat_str=pattern, mergeable_ranks=base._encoding._mergeable_ranks,
                special_tokens=base._encoding._special_tokens)._core_bpe
                for form, pattern in (("ordered", ORDERED[family]), ("grouped", GROUPED[family]))}
            best = {form: float("inf") for form in cores}
            ids = {}
            for _ in range(args.repeats):
                for form, core in cores.items():
                    start = time.process_time()
                    ids[form] = [bytes(core.encode_to_tiktoken_buffer(b, base._allowed))
                                 for b in batches]
                    best[form] = min(best[form], time.process_time() - start)
            if ids["ordered"] != ids["grouped"]:
                raise SystemExit(f"{kind} {family}: the grouped regex gave other ids")
            row = {form: round(seconds / len(texts) * 1e6, 1) for form, seconds in best.items()}
            row["x"] = round(best["ordered"] / best["grouped"], 2)
            results.setdefault(kind, {})[family] = row
            print(f"{kind:5s} {family:20s} ordered {row['ordered']:6.1f} µs  grouped "
                  f"{row['grouped']:6.1f} µs  {row['x']:.2f} x  (same ids, {len(texts)} records)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

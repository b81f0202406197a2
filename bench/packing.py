"""Packing efficiency and packer speed on real example lengths: `python3 -m bench.packing`.

Lengths come from preparing the README main job's data (examples/*.jsonl, markers template,
default tokenizer) and the benchmark's 100k chat corpus exactly as `sftprep run` prepares them
(each example truncated to the pack length first). Each corpus is packed as one shard by each
algorithm of sftprep.transforms.pack; efficiency = real tokens / (rows x N).
"""

from __future__ import annotations

import argparse
import glob
import json
import time

import numpy as np

from bench import corpora
from sftprep.tokenizer.load import DEFAULT_TOKENIZER, load_tokenizer_source
from sftprep.transforms import templates
from sftprep.transforms.pack import PACKERS, efficiency
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord
from sftprep.tokenizer.runtime import TokenizerRuntime

GSM8K_MAP = (("prompt", "question"), ("completion", "answer"))


def prepared_lengths(records, runtime, bos, eos, max_length):
    spec = templates.TemplateSpec("markers", bos=bos, eos=eos)
    settings = PrepareSettings(template=spec, field_map=GSM8K_MAP, max_length=max_length)
    lengths, seen = [], set()
    for start in range(0, len(records), 1024):
        batch = prepare_batch(records[start:start + 1024], settings, runtime)
        for example_id, length in zip(batch.rows.example_id, np.diff(batch.rows.offsets)):
            if example_id not in seen:  # duplicates are written once
                seen.add(example_id)
                lengths.append(int(length))
    return np.asarray(lengths, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chat-records", type=int, default=100000)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    source = load_tokenizer_source(DEFAULT_TOKENIZER)
    files, _ = source.with_tokens(templates.TemplateSpec("markers").special_tokens())
    runtime = TokenizerRuntime.from_json(files["tokenizer.json"].decode(), source.bos)
    corpus = {
        "readme main job": [RawRecord(path, line, text.rstrip("\n"))
                            for path in sorted(glob.glob("examples/*.jsonl"))
                            for line, text in enumerate(open(path, encoding="utf-8"), 1)
                            if text.strip()],
        f"chat {args.chat_records // 1000}k": [
            RawRecord("chat.jsonl", line, json.dumps(record))
            for line, record in enumerate(corpora.records("chat", args.chat_records), 1)],
    }
    rows = []
    print("| corpus | N | packer | examples | packs | efficiency | packing time |")
    print("|---|---|---|---|---|---|---|")
    for name, records in corpus.items():
        for capacity in (2048, 4096):
            lengths = prepared_lengths(records, runtime, source.bos, source.eos, capacity)
            for packer, pack in PACKERS.items():
                started = time.perf_counter()
                packs = pack(lengths, capacity)
                seconds = time.perf_counter() - started
                value = efficiency(lengths, len(packs), capacity)
                rows.append({"corpus": name, "pack_length": capacity, "packer": packer,
                             "examples": len(lengths), "packs": len(packs),
                             "efficiency": round(value, 5), "seconds": round(seconds, 3)})
                print(f"| {name} | {capacity} | {packer} | {len(lengths)} | {len(packs)} | "
                      f"{value:.2%} | {seconds:.2f} s |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()

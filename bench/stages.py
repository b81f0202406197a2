"""Per-stage cost of the example path, in µs per record, each stage timed alone over a corpus.

    python3 -m bench.stages [--kind pc|chat] [--records 20000] [--json FILE] [--python-only]

It calls the same pure functions the pipeline runs, batch by batch, so the figures show where
the Python time of a run goes and how it compares with the tokenizer's. Each stage reports its
wall time and its CPU time (the process's, so the 2-thread token-id stage counts both threads):
on a shared machine CPU time is the steadier figure. `--python-only` stops before the token ids
(reading to trained spans), for quick comparisons of the Python stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import pathlib
import sys
import time
from typing import Dict, List

from bench import corpora
from bench.harness import TEMPLATES, prepare_tokenizer
from sftprep.pipeline.prepare import decode_examples, encode_rows
from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.prepare import PrepareSettings, finish_batch, start_batch
from sftprep.transforms.read import iter_raw_records
from sftprep.transforms.records import RawRecord, Rejection
from sftprep.transforms.templates import TemplateSpec, render
from sftprep.tokenizer.labels import find_hostile, label_batch, plain_texts
from sftprep.tokenizer.runtime import TokenizerRuntime, encode_texts
from sftprep.tokenizer.load import load_tokenizer_source


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.stages")
    parser.add_argument("--kind", choices=("pc", "chat"), default="pc")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--work", default=str(pathlib.Path(__file__).parent / "work"))
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--python-only", action="store_true",
                        help="time reading to trained spans only (no token ids, labels, rows)")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work)
    corpus = corpora.build(args.kind, args.records, work)
    template = TEMPLATES[args.kind]
    tokenizer_dir = prepare_tokenizer(template, work)
    source = load_tokenizer_source(str(tokenizer_dir))
    spec = TemplateSpec(template, bos=source.bos, eos=source.eos)
    settings = PrepareSettings(template=spec)
    runtime = TokenizerRuntime.from_file(str(tokenizer_dir / "tokenizer.json"), spec.bos)
    runtime.fast_bpe()  # built once per worker, before its first batch: not a per-record cost
    gc.freeze()  # as the workers do once loaded (pipeline/prepare.py)

    walls: Dict[str, float] = {}
    cpus: Dict[str, float] = {}

    def timed(name, function, *arguments):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function(*arguments)
        cpus[name] = cpus.get(name, 0.0) + time.process_time() - cpu
        walls[name] = walls.get(name, 0.0) + time.perf_counter() - wall
        return value

    def read(path: pathlib.Path) -> List[RawRecord]:
        with open(path, "rb") as stream:
            return list(iter_raw_records(str(path), stream, 1 << 26))

    records = timed("read lines", read, corpus)
    piece_bytes = piece_tokens = 0

    for index in range(0, len(records), 1024):
        batch = records[index:index + 1024]
        parsed = timed("parse", lambda b: [parse_record(r) for r in b], batch)
        parsed = [c for c in parsed if not isinstance(c, Rejection)]
        convs = timed("normalize", lambda b: [normalize_conversation(c) for c in b], parsed)
        convs = [c for c in convs if not isinstance(c, tuple)]
        timed("example id", lambda b: [c.example_id() for c in b], convs)
        rendered = timed("render", lambda b: [render(c, spec) for c in b], convs)
        hostile = timed("special-token scan", find_hostile, runtime, rendered)
        spans = timed("trained spans", lambda b: [r.trained_spans("all_assistant") for r in b],
                      rendered)
        if args.python_only:
            continue
        encoded = timed("token ids (encode_texts)", encode_texts, runtime,
                        plain_texts(rendered, hostile))
        timed("labels, batch-wide", label_batch, runtime,
              [s for s, h in zip(spans, hostile) if not h], encoded)
        started = dataclasses.replace(start_batch(batch, settings, runtime), encoded=encoded)
        prepared = timed("finish_batch: labels, fit, shard, rows", finish_batch, started,
                         settings, runtime)
        piece = timed("encode examples for the shuffle", encode_rows, prepared.rows)
        timed("decode examples (the writer's read)", decode_examples, [piece])
        piece_bytes, piece_tokens = piece_bytes + len(piece), piece_tokens + prepared.rows.num_tokens
    count = len(records)
    print(f"{'stage':44s} {'wall µs':>8s} {'CPU µs':>8s}  (per record, {count} records)")
    for name in walls:
        print(f"{name:44s} {walls[name] / count * 1e6:8.1f} {cpus[name] / count * 1e6:8.1f}")
    per_token = round(piece_bytes / piece_tokens, 3) if piece_tokens else None
    if per_token:
        print(f"examples for the shuffle (piece files): {per_token} bytes per token")
    if args.json:
        table = {name: {"wall_us": round(walls[name] / count * 1e6, 2),
                        "cpu_us": round(cpus[name] / count * 1e6, 2)} for name in walls}
        pathlib.Path(args.json).write_text(json.dumps(
            {"kind": args.kind, "records": count, "stages": table,
             "piece_bytes_per_token": per_token}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

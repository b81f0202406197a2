"""The cost of mixing: a 3-source run with and without shares, `python3 -m bench.mixture`.

Three sources of about a third of `--records` each, built from the bundled files with an index
in each prompt so records stay distinct: gsm8k (question / answer, read through `map`), alpaca
and glaive tool calls (ShareGPT, forced with `format`). The same sources run once plainly and
once with shares by trained tokens (the extra pass: per-shard totals after deduplication, one
plan, copies applied by the writers). The issue's bar: the mixture costs within 15% of the
plain run. Runs alternate, `--repeats` times each; the median wall time is compared.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
from typing import Dict, List

import yaml

from bench.harness import measure

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
SOURCES = (("gsm8k", "gsm8k_train.jsonl", "question"),
           ("alpaca", "alpaca_en_demo.jsonl", "instruction"),
           ("tools", "glaive_toolcall_en_demo.jsonl", None))
SHARES = {"gsm8k": 0.4, "alpaca": 0.35, "tools": 0.25}


def _vary(record: dict, field, index: int) -> dict:
    if field is not None:
        record[field] = f"{record[field]} (#{index})"
    else:  # the first human turn
        turn = next(t for t in record["conversations"] if t["from"] == "human")
        turn["value"] = f"{turn['value']} (#{index})"
    return record


def build(directory: pathlib.Path, records: int) -> Dict[str, pathlib.Path]:
    """One file per source, `records` in all (written once)."""
    paths = {}
    for position, (name, file, field) in enumerate(SOURCES):
        count = records // len(SOURCES) + (1 if position < records % len(SOURCES) else 0)
        path = directory / name / f"{name}_{count}.jsonl"
        paths[name] = path
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        base = [line for line in (DATA / file).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        with open(path, "w", encoding="utf-8") as handle:
            for index in range(count):
                record = _vary(json.loads(base[index % len(base)]), field, index)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return paths


def config(paths: Dict[str, pathlib.Path], shares: bool) -> dict:
    entries: List[dict] = []
    for name, path in paths.items():
        entry = {"name": name, "input": str(path)}
        if name == "gsm8k":
            entry["map"] = {"prompt": "question", "completion": "answer"}
        if name == "tools":
            entry["format"] = "sharegpt"
        if shares:
            entry["share"] = SHARES[name]
        entries.append(entry)
    out = {"template": "markers", "sources": entries}
    if shares:
        out["mix_by"] = "trained_tokens"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", help="folder for the corpus and outputs (default: a temp one)")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="sftprep-bench-mix-"))
    paths = build(work / "corpus", args.records)
    walls: Dict[str, List[float]] = {"plain": [], "shares": []}
    rss: Dict[str, float] = {"plain": 0.0, "shares": 0.0}
    for attempt in range(args.repeats):
        for kind in ("plain", "shares"):
            file = work / f"{kind}.yaml"
            file.write_text(yaml.safe_dump(config(paths, kind == "shares")), encoding="utf-8")
            result = measure([sys.executable, "-m", "sftprep", "run", "--config", str(file),
                              "--output", str(work / f"out-{kind}"), "--progress", "never"])
            walls[kind].append(result["wall"])
            rss[kind] = max(rss[kind], result["peak_rss_mib"])
            print(f"{kind} #{attempt + 1}: {result['wall']:.1f} s  {result['stdout']}", flush=True)
    plain, mixed = statistics.median(walls["plain"]), statistics.median(walls["shares"])
    print("| sources | records | run | median wall s | records/s | peak RSS MiB | × plain |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for kind, wall in (("plain", plain), ("shares", mixed)):
        label = "no mixing" if kind == "plain" else "shares by trained tokens"
        print(f"| 3 | {args.records:,} | {label} | {wall:.1f} | {args.records / wall:,.0f} | "
              f"{rss[kind]:,.0f} | {wall / plain:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"records": args.records, "walls": walls, "peak_rss_mib": rss,
                       "ratio": mixed / plain}, handle, indent=1)
    return 0 if mixed <= 1.15 * plain else 1


if __name__ == "__main__":
    sys.exit(main())

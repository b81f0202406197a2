"""What writing packs costs: `sftprep run` on the chat corpus with and without --pack-length,
`python3 -m bench.packing_cost --records 1000000`.

Both runs are the same `sftprep run` as a user runs it (same corpus, tokenizer, template,
max length); the packed one adds `--pack-length N` (N = the max length, so every example fits).
Runs alternate, `--repeats` times each, and which goes first alternates too (a VM that slows
down or warms up during a pair does not favour one side); wall time and the peak RSS of the
process tree are measured by bench.harness.measure, the packing efficiency is read from
stats.json, and each row records the 1-minute load average before its run (anything above the
core count means other work shared the CPUs). The issue's bar: packed costs at most 10% more
wall time, and peak memory stays under 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys

from bench import corpora
from bench.harness import ROOT, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--pack-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    corpus = corpora.build("chat", args.records, work)
    rows = []
    for repeat in range(args.repeats):
        for packed in ((False, True) if repeat % 2 == 0 else (True, False)):
            out = work / ("packed" if packed else "plain")
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "sftprep", "run", "--input", str(corpus), "--output",
                       str(out), "--max-length", str(args.pack_length), "--progress", "never"]
            if packed:
                command += ["--pack-length", str(args.pack_length)]
            load = os.getloadavg()[0]
            result = measure(command)
            stats = json.loads((out / "stats.json").read_text())
            efficiency = stats.get("packing", {}).get("train", {}).get("efficiency")
            rows.append({"packed": packed, "records": args.records,
                         "wall_s": round(result["wall"], 2),
                         "peak_rss_mib": round(result["peak_rss_mib"]),
                         "rows_written": stats["rows_written"], "efficiency": efficiency,
                         "load_before": round(load, 2), "cpus": os.cpu_count()})
            print(json.dumps(rows[-1]), flush=True)
    plain = statistics.median(r["wall_s"] for r in rows if not r["packed"])
    packed = statistics.median(r["wall_s"] for r in rows if r["packed"])
    print(f"packed / plain wall time: {packed / plain:.3f} (bar: <= 1.10); peak RSS "
          f"{max(r['peak_rss_mib'] for r in rows)} MiB (bar: < 4096)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

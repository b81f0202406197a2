"""Start-to-exit time of a 10-record `sftprep run` (issue 18: under 2.5 s), median of N runs.

    python3 -m bench.startup [--runs 5] [--tree DIR ...] [--json FILE]

Each run is a fresh `python -m sftprep run --input examples/seed_examples.jsonl` process into a
new output folder, timed from launch to exit, with the CPU time it and its children used. With
several `--tree` checkouts (e.g. main and a branch), runs alternate between them, so a machine
whose speed drifts affects each tree alike.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parents[1]
INPUT = "examples/seed_examples.jsonl"


def one_run(tree: pathlib.Path, output: pathlib.Path) -> Dict[str, float]:
    """Wall and CPU seconds of one run with `tree` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sftprep", "run", "--input", str(tree / INPUT),
                    "--output", str(output), "--progress", "never"],
                   env=env, check=True, stdout=subprocess.DEVNULL, cwd=tree)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.startup")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", action="append", default=[],
                        help="a checkout to time (repeatable; default: this one)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    trees = [pathlib.Path(t).resolve() for t in args.tree] or [ROOT]
    results: Dict[str, List[Dict[str, float]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="sftprep-startup-") as scratch:
        for index in range(args.runs):
            for number, tree in enumerate(trees):
                output = pathlib.Path(scratch) / f"out-{number}-{index}"
                results[str(tree)].append(one_run(tree, output))
    summary = {}
    for tree, runs in results.items():
        walls = [r["wall"] for r in runs]
        cpus = [r["cpu"] for r in runs]
        summary[tree] = {"median_wall_s": round(statistics.median(walls), 2),
                         "median_cpu_s": round(statistics.median(cpus), 2),
                         "walls": [round(w, 2) for w in walls],
                         "cpus": [round(c, 2) for c in cpus]}
        print(f"{tree}: median {statistics.median(walls):.2f} s wall, "
              f"{statistics.median(cpus):.2f} s CPU; walls {', '.join(f'{w:.2f}' for w in walls)}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

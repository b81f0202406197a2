"""The benchmark: sftprep against the tokenizer's limit and what users would otherwise run.

    python3 -m bench.harness                      # 10k and 100k records, both corpora
    python3 -m bench.harness --sizes 10000 100000 1000000 --results bench/RESULTS.md

For every corpus and size, on the same input file, tokenizer, max length and masking, each
method runs as its own process; the harness measures its wall time from process start to exit
and its peak RSS (summed over the process tree, sampled every 50 ms). Records/s is records over
wall time, except for the limit and the engine, which are records over their timed encode
loops alone.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import psutil

from bench import corpora

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = {"pc": "separator", "chat": "chatml"}
PEERS = {"pc": "peer_a", "chat": "peer_b"}
PEER_LABELS = {"peer_a": "peer A: datasets.map script", "peer_b": "peer B: apply_chat_template"}


def measure(command: List[str], env: Optional[Dict[str, str]] = None,
            timeout: float = 3600) -> Dict[str, object]:
    """Run a command; wall seconds, peak RSS and peak PSS of its process tree, its last stdout
    line.

    RSS, summed over the tree, counts a page shared by several processes once per process: it
    overstates what children forked from a loaded parent use. PSS (proportional set size, from
    /proc/PID/smaps_rollup; sampled every 0.5 s, as it costs more to read) splits each shared
    page among its sharers, so its sum is the memory the tree really holds.

    Output goes to files, not pipes: a chatty child (progress bars) would otherwise fill a pipe
    nobody reads until the end and block.
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=ROOT,
                                   env=dict(os.environ, **(env or {})))
        peak = peak_pss = samples = 0
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                if samples % 10 == 0:
                    peak_pss = max(peak_pss, sum(_pss(p) for p in tree))
            except psutil.Error:
                tree = [root]
            samples += 1
            if time.perf_counter() - start > timeout:
                for member in tree:
                    member.kill()
                raise TimeoutError(f"{' '.join(command)} ran over {timeout:.0f}s")
            time.sleep(0.05)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n"
                               f"{stderr.read()[-3000:]}")
        lines = [line for line in stdout.read().splitlines() if line.strip()]
    return {"wall": wall, "peak_rss_mib": peak / 2**20, "peak_pss_mib": peak_pss / 2**20,
            "stdout": lines[-1] if lines else ""}


def _pss(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except (psutil.Error, AttributeError):  # gone, or no PSS on this platform
        return 0


def prepare_tokenizer(template: str, directory: pathlib.Path) -> pathlib.Path:
    """The default tokenizer with the template's control tokens, shared by every method."""
    from sftprep.transforms.templates import TemplateSpec
    from sftprep.tokenizer.load import DEFAULT_TOKENIZER, load_tokenizer_source

    target = directory / f"tokenizer_{template}"
    if not (target / "tokenizer.json").exists():
        source = load_tokenizer_source(DEFAULT_TOKENIZER)
        files, _ = source.with_tokens(TemplateSpec(template, sep="<|SEP|>").special_tokens())
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (target / name).write_bytes(data)
    return target


METHODS = ("limit", "engine", "peer", "sftprep", "sftprep_workers")
ENGINE_LABEL = "engine: sftprep's BPE engine alone"


def run_case(kind: str, size: int, work: pathlib.Path, max_length: int,
             methods: Sequence[str] = METHODS) -> List[Dict[str, object]]:
    corpus = corpora.build(kind, size, work)
    template = TEMPLATES[kind]
    tokenizer_dir = prepare_tokenizer(template, work)
    python = sys.executable
    rows: List[Dict[str, object]] = []

    def add(method: str, result: Dict[str, object], records: int, tokens: int,
            trainable: Optional[int], seconds: float) -> None:
        rows.append({"corpus": kind, "size": size, "method": method, "records": records,
                     "tokens": tokens, "trainable_tokens": trainable, "seconds": seconds,
                     "records_per_s": records / seconds, "tokens_per_s": tokens / seconds,
                     "wall": result["wall"], "peak_rss_mib": result["peak_rss_mib"],
                     "peak_pss_mib": result["peak_pss_mib"]})

    if "limit" in methods:
        limit = measure([python, "-m", "bench.methods", "limit", "--input", str(corpus),
                         "--tokenizer-dir", str(tokenizer_dir), "--template", template])
        out = json.loads(limit["stdout"])
        add("limit: encode_batch", limit, out["records"], out["tokens"], None, out["seconds"])
    if "engine" in methods:
        result = measure([python, "-m", "bench.methods", "engine", "--input", str(corpus),
                          "--tokenizer-dir", str(tokenizer_dir), "--template", template])
        out = json.loads(result["stdout"])
        add(ENGINE_LABEL, result, out["records"], out["tokens"], None, out["seconds"])

    peer = PEERS[kind]
    if "peer" in methods:
        result = measure([python, "-m", "bench.methods", peer, "--input", str(corpus),
                          "--tokenizer-dir", str(tokenizer_dir), "--output",
                          str(work / f"{peer}_{kind}_{size}.parquet"),
                          "--max-length", str(max_length)])
        out = json.loads(result["stdout"])
        add(PEER_LABELS[peer], result, out["records"], out["tokens"], out["trainable_tokens"],
            result["wall"])

    variants = {"sftprep": ("sftprep run", []),
                "sftprep_workers": ("sftprep run, 2 worker processes",
                                    ["--direct_num_workers", "2",
                                     "--direct_running_mode", "multi_processing"])}
    for label, extra in (variants[m] for m in methods if m in variants):
        output = work / f"sftprep_{kind}_{size}_{len(extra)}"
        result = measure([python, "-m", "sftprep", "run", "--input", str(corpus), "--output",
                          str(output), "--template", template, "--max-length", str(max_length),
                          "--max-rejected-fraction", "0", *extra])
        stats = json.loads((output / "stats.json").read_text())
        tokens = sum(v["total"] for v in stats["tokens"].values())
        trainable = sum(v["trainable"] for v in stats["tokens"].values())
        add(label, result, stats["rows_written"], tokens, trainable, result["wall"])

    rates = {row["method"]: row["records_per_s"] for row in rows}
    limit_rate, peer_rate = rates.get("limit: encode_batch"), rates.get(PEER_LABELS[peer])
    for row in rows:
        row["x_limit"] = row["records_per_s"] / limit_rate if limit_rate else None
        row["x_peer"] = row["records_per_s"] / peer_rate if peer_rate else None
    return rows


def machine() -> Dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def markdown(rows: List[Dict[str, object]], info: Dict[str, object]) -> str:
    lines = [f"Machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
             f"Python {info['python']}, {info['platform']}.", "",
             "| corpus | records | method | wall s | records/s | tokens/s | peak RSS MiB "
             "| peak PSS MiB | × limit | × peer |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['size']:,} | {r['method']} | {r['wall']:.1f} | "
                     f"{r['records_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_rss_mib']:,.0f} | {r['peak_pss_mib']:,.0f} | "
                     f"{_ratio(r['x_limit'])} | {_ratio(r['x_peer'])} |")
    return "\n".join(lines) + "\n"


def _ratio(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--corpora", nargs="+", choices=("pc", "chat"), default=["pc", "chat"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which methods to run (ratios need the limit and the peer)")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument("--markdown", default=None, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work)
    rows: List[Dict[str, object]] = []
    for size in args.sizes:
        for kind in args.corpora:
            case = run_case(kind, size, work, args.max_length, args.methods)
            rows.extend(case)
            print(markdown(case, machine()), flush=True)
    info = machine()
    table = markdown(rows, info)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

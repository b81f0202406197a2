"""Finishing a run: stats.json, the report, then manifest.json (the completion marker), then LATEST.

A run that fails its final checks writes stats.json and the report, then raises RunFailed: no
manifest, no LATEST, so it is never mistaken for a good run. One of those checks: every input
is still what the launch fingerprinted (size and sha256 locally, generation on gs://); the
readers read only the fingerprinted bytes, and a file rewritten meanwhile fails the run with
"input changed during the run".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Dict, Iterator, List, Optional

from sftprep.pipeline import files, publish
from sftprep.transforms import stats as stats_lib

REPORT_SAMPLE_BYTES = 32 * 1024 * 1024  # of rejected/ read at most for the report's examples


class RunFailed(RuntimeError):
    """The run finished but must not be presented as complete (accounting, too many rejections)."""


@dataclasses.dataclass(frozen=True)
class Publishing:
    """A published run: OUT (`root`), the run's id (its folder under OUT/runs/), and how many
    complete runs to keep (0: all)."""

    root: str
    run_id: str
    keep_runs: int = 0


def finalize(output: str, manifest_base: Dict[str, Any], max_rejected_fraction: float,
             publishing: Optional[Publishing], raw_stats: stats_lib.Stats,
             data_files: List[Dict[str, Any]], rejected_files: List[Dict[str, Any]]
             ) -> Dict[str, Any]:
    """Once every file is written, finish the run as the module's docstring says; returns the
    manifest."""
    files.delete_tree(files.join(output, files.PIECES))
    summary = stats_lib.summarize(raw_stats or {},
                                  (manifest_base.get("config") or {}).get("mixture"))
    failure = run_failure(summary, max_rejected_fraction)
    stats_bytes = stats_lib.to_json(summary)  # histogram buckets in numeric order
    files.write_bytes(files.join(output, "stats.json"), stats_bytes)
    write_report(output, summary, rejected_files, failure)
    if failure:  # stats.json and the report say why; no manifest, no LATEST
        raise RunFailed(failure)
    manifest = dict(manifest_base)
    changed = [c for c in map(files.input_change, manifest.pop(files.INPUT_STATE, [])) if c]
    if changed:  # the rows may hold bytes the manifest's fingerprints do not describe
        raise RunFailed(f"input changed during the run: {changed[0]}"
                        + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                        + "; run again once the inputs are final")
    manifest["outputs"] = sorted(data_files + rejected_files, key=lambda f: f["path"])
    manifest["stats_sha256"] = files.sha256_hex(stats_bytes)
    manifest["summary"] = {k: summary[k] for k in ("records_read", "rows_written",
                                                    "rows_by_split", "rejected", "dropped",
                                                    "duplicates")}
    manifest.setdefault("timings", {})["finished_at"] = time.time()
    files.write_bytes(files.join(output, files.MANIFEST),
                      (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    if publishing:  # only now, with the run complete and checked
        publish.write_latest(publishing.root, publishing.run_id)
        publish.prune(publishing.root, publishing.keep_runs, publishing.run_id)
    return manifest


def write_report(output: str, summary: Dict[str, Any], rejected_files: List[Dict[str, Any]],
                 failure: str = "") -> None:
    """report.html and report/*.png next to stats.json, from the summary and a few rejected rows;
    `failure` (why the run failed its final checks) is shown at the top when given.

    A report that cannot be written is logged, not raised: it must not keep the manifest from
    marking a complete run complete, nor hide why a failed run failed.
    """
    from sftprep.views import report

    try:
        reasons = report.sample_reasons(summary)
        lines = _rejected_lines(output, [f["path"] for f in rejected_files])
        samples = report.collect_samples(lines, reasons) if reasons else {}
        for name, data in sorted(report.render_report(summary, samples, failure).items()):
            files.write_bytes(files.join(output, *name.split("/")), data)
    except Exception as err:  # noqa: BLE001 - see the docstring
        logging.warning("report.html not written: %s: %s", type(err).__name__, err)


def _rejected_lines(output: str, paths: List[str]) -> Iterator[str]:
    """Lines of rejected/*.jsonl, in order, up to REPORT_SAMPLE_BYTES in all."""
    budget = REPORT_SAMPLE_BYTES
    for path in sorted(paths):
        with files.open_read(files.join(output, *path.split("/"))) as handle:
            for line in handle:
                budget -= len(line)
                if budget < 0:
                    return
                yield line.decode("utf-8", errors="replace")


def run_failure(summary: Dict[str, Any], max_rejected_fraction: float) -> str:
    """Why the run fails its final checks (accounting, too many unused records); "" if it passes."""
    if not summary["accounting"]["holds"]:
        return (f"accounting invariant violated: read {summary['records_read']} != "
                f"written {summary['rows_written'] - summary.get('repeats', 0)} + rejected "
                f"{summary['rejected']} + dropped {summary['dropped']} + duplicates "
                f"{summary['duplicates']} + sampled out {summary.get('sampled_out', 0)}")
    read = summary["records_read"]
    unused = summary["rejected"] + summary["dropped"]
    if read and unused / read > max_rejected_fraction:
        reasons = {**summary["rejected_by_reason"], **summary["dropped_by_reason"]}
        top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        return (f"{unused} of {read} records rejected or dropped ({unused / read:.1%} > "
                f"--max-rejected-fraction {max_rejected_fraction}); top reasons: {top}. "
                "See report.html, stats.json and rejected/ of this run; raise the limit if this "
                "is expected")
    return ""

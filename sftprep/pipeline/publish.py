"""Versioned, atomic publishing and skip-when-unchanged, on any Beam file system.

With --publish a run writes into OUT/runs/<run_id>/ and, only after its manifest is written
(so after the accounting and rejection checks passed), replaces the small OUT/LATEST pointer.
LATEST is the only object readers look at first, and it is written in one operation (a rename
on local disk, a single object upload on GCS), so a reader sees the previous complete run or
the new complete run, never a partial one. A failed or killed run never touches LATEST.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional

from apache_beam.io.filesystems import FileSystems

from sftprep.pipeline import files

LATEST = "LATEST"
RUNS = "runs"


def new_run_id(started: float, fingerprint: str) -> str:
    """Sortable by time: 20261125T160000Z-1a2b3c4d."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + fingerprint[:8]


def read_latest(output: str) -> Optional[Dict[str, str]]:
    """The LATEST pointer of OUT, None when there is none; a malformed one is a DatasetError."""
    from sftprep import contained

    path = files.join(output, LATEST)
    if not FileSystems.exists(path):
        return None
    return contained.parse_latest(contained.read_small(path, contained.MAX_LATEST_BYTES), path)


def resolve(output: str) -> str:
    """The directory holding the data: the run LATEST names, or OUT itself when unpublished.

    LATEST's path must lead to a folder inside OUT (`contained.inside`); anything else is a
    DatasetError, never followed."""
    from sftprep import contained

    latest = read_latest(output)
    if not latest:
        return output
    return contained.inside(output, latest["path"], f"{files.join(output, LATEST)}: path")


def write_latest(output: str, run_id: str) -> None:
    data = (json.dumps({"run": run_id, "path": f"{RUNS}/{run_id}"}, sort_keys=True) + "\n").encode()
    target = files.join(output, LATEST)
    if "://" in output:
        files.write_bytes(target, data)  # one object upload: atomic for readers
        return
    handle, temporary = tempfile.mkstemp(dir=output, prefix=".LATEST.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, target)


def list_runs(output: str) -> List[str]:
    pattern = files.join(output, RUNS, "*", files.MANIFEST)
    complete = {pathlib.PurePosixPath(m.path).parent.name
                for m in FileSystems.match([pattern])[0].metadata_list}
    if "://" in output:
        every = {m.path.split(f"/{RUNS}/", 1)[1].split("/", 1)[0]
                 for m in FileSystems.match([files.join(output, RUNS, "**")])[0].metadata_list}
    else:
        directory = os.path.join(output, RUNS)
        every = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    return sorted(every | complete)


def prune(output: str, keep: int, current: str) -> List[str]:
    """Delete runs beyond the newest `keep` complete ones, and incomplete runs older than the
    current one (left by killed runs). Never the current run. Returns what was deleted."""
    runs = list_runs(output)
    complete = [r for r in runs
                if FileSystems.exists(files.join(output, RUNS, r, files.MANIFEST))]
    kept = set(complete[-keep:]) if keep > 0 else set(complete)
    doomed = [r for r in runs if r != current and r not in kept and r < current]
    for run in doomed:
        files.delete_tree(files.join(output, RUNS, run))
    return doomed


def _sha256_files(paths: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.encode())
        with open(path, "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """sftprep's version and the hash of its source files (catches unreleased code changes)."""
    import sftprep

    root = pathlib.Path(sftprep.__file__).parent
    return sftprep.__version__ + "+" + _sha256_files(str(p) for p in root.rglob("*.py"))[:16]


def run_fingerprint(*, inputs: List[Dict[str, Any]], config: Dict[str, Any],
                    tokenizer_files: str, template: str) -> str:
    """Everything that decides the output bytes: inputs, options, tokenizer, template, code."""
    relevant = {k: v for k, v in config.items()
                if k not in ("output", "publish", "keep_runs", "skip_if_unchanged", "progress")}
    payload = json.dumps({"inputs": inputs,
                          "config": relevant, "tokenizer": tokenizer_files,
                          "template": template, "code": code_fingerprint()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()

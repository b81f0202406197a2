"""Versioned, atomic publishing and skip-when-unchanged, on any Beam file system.

With --publish a run writes into OUT/runs/<run_id>/ and, only after its manifest is written
(so after the accounting and rejection checks passed), replaces the small OUT/LATEST pointer.
LATEST is the only object readers look at first, and it is written in one operation (a rename
on local disk, a single object upload on GCS), so a reader sees the previous complete run or
the new complete run, never a partial one. A failed or killed run never touches LATEST; LATEST
only moves forward (to a newer run id) and only to a complete run (manifest present). Pruning
deletes only run folders that hold sftprep's marker (see ownership.py): a folder a user put
under runs/ is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Dict, List, Optional

from sftprep import dataset
from sftprep.pipeline import files
from sftprep.pipeline.ownership import MARKER

LATEST, RUNS = dataset.LATEST, dataset.RUNS


def new_run_id(started: float, fingerprint: str) -> str:
    """Unique and sortable by time, to the microsecond, with a random tail for runs started in
    the same microsecond: 20261125T160000.123456Z-1a2b3c4d-9f0e7d6c."""
    seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    micros = int(round((started % 1) * 1e6)) % 1000000
    return f"{seconds}.{micros:06d}Z-{fingerprint[:8]}-{os.urandom(4).hex()}"


def read_latest(output: str) -> Optional[Dict[str, str]]:
    """The LATEST pointer of OUT, None when there is none; a malformed one is a DatasetError."""
    path = files.join(output, LATEST)
    if not files.exists(path):
        return None
    return dataset.parse_latest(dataset.read_small(path, dataset.MAX_LATEST_BYTES), path)


def resolve(output: str) -> str:
    """The directory holding the data: the run LATEST names, or OUT itself when unpublished.

    LATEST's path must lead to a folder inside OUT (`dataset.inside`); anything else is a
    DatasetError, never followed."""
    return dataset.resolve_latest(output)


def write_latest(output: str, run_id: str) -> bool:
    """Point OUT/LATEST at a run; False (and LATEST unchanged) when that would move it backwards
    or to a run that is not complete (no manifest). Runs hold the output's lock, so a single
    writer ever gets here; the checks keep LATEST right even without one."""
    if not files.exists(files.join(output, RUNS, run_id, files.MANIFEST)):
        return False
    target = files.join(output, LATEST)
    if files.exists(target):
        try:
            current = str(json.loads(files.read_text(target)).get("run", ""))
        except (ValueError, AttributeError):
            current = ""  # unreadable: replaced
        if current > run_id:
            return False
    data = (json.dumps({"run": run_id, "path": f"{RUNS}/{run_id}"}, sort_keys=True) + "\n").encode()
    if "://" in output:
        files.write_bytes(target, data)  # one object upload: atomic for readers
        return True
    handle, temporary = tempfile.mkstemp(dir=output, prefix=".sftprep-LATEST.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, target)
    return True


def list_runs(output: str) -> List[str]:
    """The run folders under OUT/runs/ that sftprep created (they hold its marker), sorted."""
    pattern = files.join(output, RUNS, "*", MARKER)
    return sorted(pathlib.PurePosixPath(path).parent.name for path in files.match(pattern))


def prune(output: str, keep: int, current: str) -> List[str]:
    """Delete sftprep's runs beyond the newest `keep` complete ones, and its incomplete runs
    older than the current one (left by killed or failed runs). Never the current run, never a
    folder without sftprep's marker. Returns what was deleted."""
    runs = list_runs(output)
    complete = [r for r in runs
                if files.exists(files.join(output, RUNS, r, files.MANIFEST))]
    kept = set(complete[-keep:]) if keep > 0 else set(complete)
    doomed = [r for r in runs if r < current and r not in kept]
    for run in doomed:
        files.delete_tree(files.join(output, RUNS, run))
    return doomed


def code_fingerprint() -> str:
    """sftprep's version and the hash of its source files (catches unreleased code changes)."""
    import sftprep

    digest = hashlib.sha256()
    for path in sorted(str(p) for p in pathlib.Path(sftprep.__file__).parent.rglob("*.py")):
        digest.update(path.encode())
        digest.update(hashlib.sha256(pathlib.Path(path).read_bytes()).digest())
    return sftprep.__version__ + "+" + digest.hexdigest()[:16]


def run_fingerprint(*, inputs: List[Dict[str, Any]], config: Dict[str, Any],
                    tokenizer_files: str, template: str) -> str:
    """Everything that decides the output bytes: inputs, options, tokenizer, template, code."""
    relevant = {k: v for k, v in config.items()
                if k not in ("output", "publish", "keep_runs", "skip_if_unchanged", "progress",
                             "local_processes", "local_engine")}
    payload = json.dumps({"inputs": inputs,
                          "config": relevant, "tokenizer": tokenizer_files,
                          "template": template, "code": code_fingerprint()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()

"""What sftprep may delete: only what its marker file says it wrote.

Every folder sftprep writes into holds `.sftprep-output.json`, listing the entries (files and
folders directly inside it) that are sftprep's: a dataset folder lists its artifacts
(manifest.json, train/, validation/, rejected/, tokenizer/, stats.json, report.html, report/,
_pieces/), a publishing root lists LATEST and runs/. The marker holds no time, host or pid, so
two runs of the same job leave the same bytes.

At launch, before anything is written, `check_output` refuses (one line, nothing touched) an
output that is not empty and has no marker, that holds an entry its marker does not list, or
that contains a file the run reads (an input, the tokenizer, the config file, the template).
Names starting with `.sftprep-` (the marker, the lock, their temporary files) are sftprep's.

An output written by sftprep 0.1 has no marker: it is refused like any other folder, with a
message saying so; the user deletes it (or picks a new folder) once, knowingly.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import FrozenSet, Iterable, Optional, Sequence, Set, Tuple

from sftprep.config import ConfigError
from sftprep.pipeline import files, gcs

MARKER = ".sftprep-output.json"
OWN_PREFIX = ".sftprep-"  # the marker, the lock and their temporary files
DATASET_ENTRIES: Tuple[str, ...] = (files.MANIFEST,) + files.OUTPUT_ARTIFACTS
PUBLISH_ENTRIES: Tuple[str, ...] = ("LATEST", "runs")


def entries(folder: str) -> Optional[Set[str]]:
    """The names directly inside a folder (a gs:// prefix); None when it does not exist."""
    if folder.startswith("gs://"):
        try:
            names = gcs.list_names(folder)
        except gcs.StorageError as err:
            raise ConfigError(f"--output {folder}: {err}") from None
        return {name.split("/", 1)[0] for name in names if name} or None
    if not os.path.lexists(folder):
        return None
    if not os.path.isdir(folder):
        raise ConfigError(f"--output {folder} exists and is not a directory")
    try:
        return set(os.listdir(folder))
    except OSError as err:
        raise ConfigError(f"--output {folder}: {err.strerror}") from None


def read_marker(folder: str) -> Optional[FrozenSet[str]]:
    """The entries a folder's marker lists, or None when it has no marker."""
    path = files.join(folder, MARKER)
    if not files.exists(path):
        return None
    try:
        listed = json.loads(files.read_text(path))["entries"]
        if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
            return frozenset(listed)
    except (ValueError, KeyError, TypeError):
        pass
    raise ConfigError(f"{path} is not an sftprep output marker; remove the folder's contents "
                      "yourself or choose another --output")


def marker_bytes(listed: Iterable[str]) -> bytes:
    return (json.dumps({"entries": sorted(set(listed)), "format": 1,
                        "written_by": "sftprep"}, sort_keys=True) + "\n").encode("utf-8")


def check_output(output: str, reads: Sequence[Tuple[str, str]]) -> FrozenSet[str]:
    """Refuse, in one line, an output sftprep may not write into; return what its marker lists.

    `reads` holds (flag, path) of every file or folder the run reads: none may lie inside the
    output, where sftprep deletes."""
    for flag, path in reads:
        if inside(path, output):
            raise ConfigError(f"--output {output} contains {flag} {path}; sftprep replaces what "
                              "is in its output: move it out, or choose another --output")
    present = entries(output)
    if not present:
        return frozenset()
    ours = {name for name in present if name.startswith(OWN_PREFIX)}
    others = sorted(present - ours)
    listed = read_marker(output)
    if listed is None:
        if not others:
            return frozenset()
        if {files.MANIFEST, "LATEST"} & set(others):
            raise ConfigError(
                f"--output {output} holds an output without sftprep's marker {MARKER} (written "
                "by sftprep 0.1, or by hand); sftprep deletes only what its marker lists: "
                "delete the old output yourself, or choose a new directory")
        raise ConfigError(f"--output {output} is not empty and holds no sftprep output "
                          f"({others[0]} is not sftprep's); choose an empty or new directory")
    unlisted = [name for name in others if name not in listed]
    if unlisted:
        raise ConfigError(f"--output {output} holds {unlisted[0]}, which sftprep did not write; "
                          "move it away, or choose another --output")
    return listed


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (symlinks resolved on local disk)."""
    if path.startswith("gs://") or folder.startswith("gs://"):
        return path.rstrip("/") == folder.rstrip("/") or \
            path.startswith(folder.rstrip("/") + "/")
    if "://" in path or "://" in folder:
        return False
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def claim(folder: str, listed: FrozenSet[str], mine: Sequence[str]) -> None:
    """Write the marker (what it listed, plus `mine`) before anything else in the folder, and
    drop the temporary files of sftprep's own small writes that a killed run left behind."""
    files.replace_bytes(files.join(folder, MARKER), marker_bytes(set(listed) | set(mine)))
    if "://" not in folder:
        for name in os.listdir(folder):
            leftover = name.startswith(OWN_PREFIX) and (
                ".tmp-" in name or name.startswith(OWN_PREFIX + "LATEST."))
            if leftover and not name.endswith(f".tmp-{os.getpid()}"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


def clear_dataset(folder: str, listed: FrozenSet[str]) -> None:
    """Delete the previous run's artifacts, only those the marker lists: the manifest first, so
    nothing half-replaced is ever presented as complete."""
    for name in (n for n in DATASET_ENTRIES if n in listed):
        path = files.join(folder, name)
        if "." in name:
            if files.exists(path):
                files.delete([path])
        else:
            files.delete_tree(path)


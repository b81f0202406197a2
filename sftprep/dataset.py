"""The output contract: layout names, the Parquet schema, LATEST, and opening a finished run.

What `sftprep run` writes and what every reader (the trainer, `sftprep.ecosystem`, `inspect`)
relies on, in one place and without Beam:

    OUT/manifest.json         the completion marker: config, inputs, outputs with checksums
    OUT/train/part-NNNNN-of-MMMMM.parquet, OUT/validation/...   the rows (OUTPUT_SCHEMA)
    OUT/rejected/part-*.jsonl every record not used, with its reason
    OUT/tokenizer/            the exact tokenizer
    OUT/stats.json, OUT/report.html
    OUT/LATEST, OUT/runs/<run id>/...   with --publish: LATEST names the complete run to read

Readers open a run from its manifest, never from a directory listing, and every path read from
a manifest or LATEST must stay inside the dataset root (`inside`): a forged manifest cannot send
a reader to another folder, bucket or file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any, Dict, List, Optional

import pyarrow as pa

from sftprep import storage
from sftprep.errors import DataError

IGNORE_INDEX = -100  # the label of a token that is not trained (Hugging Face's convention)
TRAIN, VALIDATION, REJECTED, TOKENIZER = "train", "validation", "rejected", "tokenizer"
SPLITS = (TRAIN, VALIDATION)
MANIFEST, STATS, REPORT = "manifest.json", "stats.json", "report.html"
LATEST, RUNS = "LATEST", "runs"
DUPLICATE_REASON = "duplicate"

# The Parquet schema of train/ and validation/ (SPEC: "Parquet columns").
OUTPUT_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
    ("num_trainable_tokens", pa.int32()),
    ("example_id", pa.string()),
    ("source", pa.string()),
    ("source_line", pa.int64()),
    ("truncated", pa.bool_()),
])


def inside(root: str, relative: Any, what: str) -> str:
    """`root` joined with `relative`, which must name something inside `root`: a relative path
    with no `..` that leaves it, no scheme, and (on local disk) no symlink out of it.

    >>> inside("gs://b/out", "train/part-0.parquet", "a shard")
    'gs://b/out/train/part-0.parquet'
    >>> inside("gs://b/out", "../other/x", "a shard")
    Traceback (most recent call last):
    ...
    sftprep.errors.DataError: a shard '../other/x' leaves the dataset root gs://b/out
    """
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{what} must be a relative path inside {root}, got {relative!r}")
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if "://" in relative or normal.startswith(("/", "../")) or normal in ("..", ".") \
            or os.path.isabs(relative):
        raise DataError(f"{what} {relative!r} leaves the dataset root {root}")
    path = storage.join(root, *normal.split("/"))
    if not storage.is_remote(root):
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            raise DataError(f"{what} {relative!r} leaves the dataset root {root} (a symlink)")
    return path


def _json_object(path: str, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(storage.read_text(path))
    except ValueError as err:
        raise DataError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def resolve_latest(output: str) -> str:
    """The folder holding the data: the run OUT/LATEST names (inside OUT), or OUT itself."""
    pointer = storage.join(output, LATEST)
    if not storage.exists(pointer):
        return output
    latest = _json_object(pointer, "LATEST")
    return inside(output, latest.get("path"), "LATEST's path")


@dataclasses.dataclass(frozen=True)
class OutputEntry:
    """One file the manifest lists: its path inside the root, split, rows and checksum."""

    path: str
    split: str
    rows: int
    sha256: str = ""


@dataclasses.dataclass(frozen=True)
class OutputDataset:
    """A finished run, opened from its manifest: where it is, and what it holds."""

    location: str  # what the user named (OUT)
    root: str  # the run's folder (LATEST followed)
    manifest: Dict[str, Any]
    entries: List[OutputEntry]

    def shards(self, split: str) -> List[str]:
        """The Parquet shards of a split that hold rows, as full paths, sorted."""
        return sorted(inside(self.root, e.path, "a manifest output")
                      for e in self.entries if e.split == split and e.rows > 0)

    def rows(self, split: str) -> int:
        return sum(e.rows for e in self.entries if e.split == split)

    @property
    def tokenizer(self) -> Dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def tokenizer_dir(self) -> str:
        return inside(self.root, self.tokenizer.get("path", TOKENIZER), "the manifest's tokenizer path")

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def fingerprint(self) -> str:
        """The run fingerprint: changes with any input byte, option, tokenizer or code change."""
        return str(self.manifest.get("fingerprint", ""))


def open_output(location: str) -> OutputDataset:
    """The run an `sftprep run --output` folder holds (its published LATEST run, if any)."""
    root = resolve_latest(location)
    manifest_path = storage.join(root, MANIFEST)
    if not storage.exists(manifest_path):
        raise DataError(f"{location}: no {MANIFEST} in {root}; point at the --output of a "
                        "finished `sftprep run`")
    manifest = _json_object(manifest_path, "the manifest")
    return OutputDataset(location, root, manifest, _entries(manifest, manifest_path))


def _entries(manifest: Dict[str, Any], where: str) -> List[OutputEntry]:
    outputs = manifest.get("outputs")
    tokenizer = manifest.get("tokenizer")
    if not isinstance(outputs, list):
        raise DataError(f"{where}: `outputs` must be a list of files")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("vocab_size"), int) \
            or isinstance(tokenizer.get("vocab_size"), bool):
        raise DataError(f"{where}: `tokenizer` must be an object with an integer vocab_size")
    entries = []
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) \
                or not isinstance(item.get("split"), str) \
                or not isinstance(item.get("rows"), int) or isinstance(item.get("rows"), bool):
            raise DataError(f"{where}: outputs[{index}] must have a string path and split and "
                            f"an integer rows, got {item!r}"[:300])
        entries.append(OutputEntry(item["path"], item["split"], item["rows"],
                                   str(item.get("sha256", ""))))
    return entries


def latest_run(output: str) -> Optional[str]:
    """The run id LATEST names, or None when OUT was not published."""
    pointer = storage.join(output, LATEST)
    if not storage.exists(pointer):
        return None
    run = _json_object(pointer, "LATEST").get("run")
    return run if isinstance(run, str) else None

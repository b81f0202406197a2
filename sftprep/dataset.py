"""The output contract: layout names, the Parquet schema, LATEST, and opening a finished run.

What `sftprep run` writes and what every reader (the trainer, `sftprep.ecosystem`, `inspect`)
relies on, in one place and without Beam:

    OUT/manifest.json         the completion marker: config, inputs, outputs with checksums
    OUT/train/part-NNNNN-of-MMMMM.parquet, OUT/validation/...   the rows (OUTPUT_SCHEMA)
    OUT/rejected/part-*.jsonl every record not used, with its reason
    OUT/tokenizer/            the exact tokenizer
    OUT/stats.json, OUT/report.html
    OUT/LATEST, OUT/runs/<run id>/...   with --publish: LATEST names the complete run to read

Readers open a run from its manifest (`open_output`), never from a directory listing. A
manifest, a LATEST pointer and a dataset folder may come from anyone: every path read from them
goes through `inside`, which refuses absolute paths, other schemes or buckets, `..` that climbs
out, and (on local disk) symlinks that lead out of the root; `check_inside` does the same for a
path found by listing the root. Manifest and LATEST are read with their shape checked.
Everything refused raises `DatasetError`, which every command prints as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from sftprep import storage
from sftprep.errors import DatasetError
from sftprep.tokenizer.labels import IGNORE_INDEX  # noqa: F401 (part of the output contract)

TRAIN, VALIDATION, TOKENIZER = "train", "validation", "tokenizer"
SPLITS = (TRAIN, VALIDATION)
MANIFEST = "manifest.json"
LATEST, RUNS = "LATEST", "runs"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists files; thousands of shards stay far below
MAX_LATEST_BYTES = 64 << 10

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

# The schema of train/ and validation/ with --pack-length N (SPEC: "Packed output"): a row holds
# whole examples end to end; seq_lengths splits it back, the lists hold one entry per example.
PACKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),  # an example's first label is -100 after another one
    ("position_ids", pa.list_(pa.int32())),  # restart at 0 for each example
    ("seq_lengths", pa.list_(pa.int32())),  # sums to num_tokens
    ("num_tokens", pa.int32()),
    ("num_trainable_tokens", pa.int32()),
    ("example_ids", pa.list_(pa.string())),
    ("sources", pa.list_(pa.string())),
    ("source_lines", pa.list_(pa.int64())),
    ("truncated", pa.list_(pa.bool_())),
])
DEFAULT_PACKER = "best_fit_decreasing"


def output_schema(pack_length: int) -> pa.Schema:
    """The rows' schema of a run: PACKED_SCHEMA with --pack-length, else OUTPUT_SCHEMA."""
    return PACKED_SCHEMA if pack_length else OUTPUT_SCHEMA


def _split_remote(location: str) -> Tuple[str, List[str]]:
    """("gs://bucket", [key parts]) for a URL."""
    scheme, rest = location.split("://", 1)
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}", [part for part in key.split("/") if part]


def _normalized(parts: List[str], relative: str) -> Optional[List[str]]:
    """`parts` followed by `relative`, `.` and `..` applied; None if `..` climbs above the
    bucket (which posixpath.normpath would silently clamp)."""
    result = list(parts)
    for part in relative.split("/"):
        if part == "..":
            if not result:
                return None
            result.pop()
        elif part not in ("", "."):
            result.append(part)
    return result


def _below(parts: Optional[List[str]], prefix: List[str]) -> bool:
    return parts is not None and len(parts) > len(prefix) and parts[:len(prefix)] == prefix


def inside(root: str, relative: Any, what: str) -> str:
    """`root` joined with `relative`, a path the dataset itself named (manifest, LATEST).

    Refused: anything but a non-empty relative path; one that, normalized (and on local disk
    with symlinks followed), is not strictly below `root`.

    >>> inside("gs://b/out", "runs/r1", "LATEST path")
    'gs://b/out/runs/r1'
    >>> inside("gs://b/out", "../other/x", "LATEST path")
    Traceback (most recent call last):
    ...
    sftprep.errors.DatasetError: LATEST path '../other/x' leads out of gs://b/out
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise DatasetError(f"{what} must be a relative path inside {root}, got "
                           f"{json.dumps(relative)[:200]}")
    if "://" in relative or relative.startswith(("/", "\\")) or os.path.isabs(relative):
        raise DatasetError(f"{what} {relative[:200]!r} is absolute; a dataset may only name "
                           f"paths inside {root}")
    if "://" in root:
        base, prefix = _split_remote(root)
        parts = _normalized(prefix, relative)
        if not _below(parts, prefix):
            raise DatasetError(f"{what} {relative[:200]!r} leads out of {root}")
        return base + "/" + "/".join(parts)
    return check_inside(root, os.path.join(root, relative), what, shown=relative)


def check_inside(root: str, path: str, what: str, shown: Optional[str] = None) -> str:
    """`path` itself when it is strictly below `root` once normalized and, on local disk,
    with every symlink followed (a shard or tokenizer file symlinked elsewhere is refused)."""
    shown = path if shown is None else shown
    if "://" in root or "://" in path:
        if "://" not in root or "://" not in path:
            raise DatasetError(f"{what} {shown[:200]!r} leads out of {root}")
        base, prefix = _split_remote(root)
        other_base, parts = _split_remote(path)
        if other_base != base or not _below(_normalized([], "/".join(parts)), prefix):
            raise DatasetError(f"{what} {shown[:200]!r} leads out of {root}")
        return path
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise DatasetError(f"{what} {shown[:200]!r} leads out of {root} (it resolves to "
                           f"{real})")
    return path


def one_line(text: str) -> str:
    """`text` with line breaks shown as \\n, so data cannot split an error message."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def parse_json_object(data: bytes, where: str) -> Dict[str, Any]:
    """A JSON object from these bytes, or a one-line DatasetError naming `where`."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"{where} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where} is not valid JSON ({err.msg}, line {err.lineno} column "
                           f"{err.colno})") from None
    except RecursionError:
        raise DatasetError(f"{where} is not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where} must hold a JSON object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _field(obj: Dict[str, Any], key: str, kind: type, where: str, name: str,
           required: bool = True) -> Any:
    if key not in obj:
        if required:
            raise DatasetError(f"{where}: missing {name}")
        return None
    value = obj[key]
    wanted = {dict: "an object", list: "a list", str: "a string", int: "an integer"}[kind]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DatasetError(f"{where}: {name} must be {wanted}, not {_kind(value)}")
    return value


def parse_manifest(data: bytes, where: str) -> Dict[str, Any]:
    """The manifest, checked for what readers use: `tokenizer` {vocab_size >= 1, fingerprint,
    optional path and added_tokens}, `outputs` [{split, path, rows >= 0}], optional
    `fingerprint`. Paths are not resolved here (see `inside`)."""
    manifest = parse_json_object(data, where)
    tokenizer = _field(manifest, "tokenizer", dict, where, "tokenizer")
    if _field(tokenizer, "vocab_size", int, where, "tokenizer.vocab_size") < 1:
        raise DatasetError(f"{where}: tokenizer.vocab_size must be at least 1, got "
                           f"{tokenizer['vocab_size']}")
    _field(tokenizer, "fingerprint", str, where, "tokenizer.fingerprint")
    _field(tokenizer, "path", str, where, "tokenizer.path", required=False)
    added = _field(tokenizer, "added_tokens", list, where, "tokenizer.added_tokens",
                   required=False)
    if added is not None and not all(isinstance(t, str) for t in added):
        raise DatasetError(f"{where}: tokenizer.added_tokens must be a list of strings")
    _field(manifest, "fingerprint", str, where, "fingerprint", required=False)
    for index, entry in enumerate(_field(manifest, "outputs", list, where, "outputs")):
        name = f"outputs[{index}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: {name} must be an object, not {_kind(entry)}")
        _field(entry, "split", str, where, f"{name}.split")
        _field(entry, "path", str, where, f"{name}.path")
        if _field(entry, "rows", int, where, f"{name}.rows") < 0:
            raise DatasetError(f"{where}: {name}.rows must not be negative")
    return manifest


def parse_latest(data: bytes, where: str) -> Dict[str, Any]:
    """A LATEST pointer: a JSON object whose `path` is a string (checked with `inside` by
    whoever follows it)."""
    latest = parse_json_object(data, where)
    _field(latest, "path", str, where, "path")
    return latest


def read_small(path: str, limit: int) -> bytes:
    """The bytes of a small file (local or gs://), refused in one line when larger than
    `limit`, a folder, or unreadable."""
    if not storage.is_remote(path) and os.path.isdir(path):
        raise DatasetError(f"{path} is a folder, not a file")
    try:
        with storage.open_read(path) as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise DatasetError(f"{path} cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise DatasetError(f"{path} is larger than {limit >> 10} KiB; it is not a file "
                           "sftprep wrote")
    return data


def read_manifest(root: str) -> Dict[str, Any]:
    """The checked manifest.json of a dataset folder (not following LATEST)."""
    path = storage.join(root, MANIFEST)
    return parse_manifest(read_small(path, MAX_MANIFEST_BYTES), path)


@contextlib.contextmanager
def parquet_errors(path: str) -> Iterator[None]:
    """Turns what pyarrow raises on a file that is not (valid) Parquet into one line."""
    try:
        yield
    except DatasetError:
        raise
    except (pa.ArrowException, OSError) as err:
        text = str(err).strip()
        detail = text.splitlines()[0] if text else type(err).__name__
        raise DatasetError(f"{path}: not a readable Parquet file ({detail[:300]})") from None


TOKEN_COLUMNS = ("input_ids", "labels")
PACKED_TOKEN_COLUMNS = ("seq_lengths",)  # of a packed shard, beside its list of example_ids


def is_packed(schema: Any) -> bool:
    """Whether a shard's schema is the packed one (it has seq_lengths)."""
    return schema.get_field_index("seq_lengths") >= 0


def check_schema(schema: Any, path: str, columns: Sequence[str] = TOKEN_COLUMNS) -> None:
    """Each of `columns` is there, `input_ids`, `labels` (and `seq_lengths`) as lists of
    integers, `example_ids` as a list of strings, `example_id` as a string; else a DatasetError
    saying which column is what."""
    for name in columns:
        index = schema.get_field_index(name)
        if index < 0:
            raise DatasetError(f"{path}: no {name} column (columns: "
                               f"{', '.join(schema.names)[:300]}); not a shard of `sftprep run`")
        kind = schema.field(index).type
        is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        if name in TOKEN_COLUMNS + PACKED_TOKEN_COLUMNS:
            wanted = "a list of integers"
            ok = is_list and pa.types.is_integer(kind.value_type)
        elif name == "example_ids":
            wanted = "a list of strings"
            ok = is_list and (pa.types.is_string(kind.value_type)
                              or pa.types.is_large_string(kind.value_type))
        else:
            wanted = "a string"
            ok = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if not ok:
            raise DatasetError(f"{path}: column {name} is {kind}, expected {wanted}")


def check_parquet(path: str, columns: Sequence[str] = TOKEN_COLUMNS) -> None:
    """Read the footer of one shard (local or gs://) and check its schema."""
    import pyarrow.parquet as pq

    with parquet_errors(path), storage.open_read(path) as handle:
        check_schema(pq.ParquetFile(handle).schema_arrow, path, columns)


def resolve_latest(output: str) -> str:
    """The folder holding the data: the run OUT/LATEST names (inside OUT), or OUT itself."""
    pointer = storage.join(output, LATEST)
    if not storage.exists(pointer):
        return output
    latest = parse_latest(read_small(pointer, MAX_LATEST_BYTES), pointer)
    return inside(output, latest["path"], f"{pointer}: path")


@dataclasses.dataclass(frozen=True)
class OutputDataset:
    """A finished run, opened from its checked manifest; every path it hands out is inside
    `root`."""

    location: str  # what the user named (OUT)
    root: str  # the run's folder (LATEST followed)
    manifest: Dict[str, Any]

    @property
    def manifest_path(self) -> str:
        return storage.join(self.root, MANIFEST)

    def shards(self, split: str) -> List[str]:
        """The split's Parquet shards that hold rows, as the manifest lists them, sorted."""
        return sorted(inside(self.root, entry["path"], f"{self.manifest_path}: outputs[{index}].path")
                      for index, entry in enumerate(self.manifest["outputs"])
                      if entry["split"] == split and entry["rows"] > 0)

    def rows(self, split: str) -> int:
        return sum(entry["rows"] for entry in self.manifest["outputs"] if entry["split"] == split)

    @property
    def tokenizer(self) -> Dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def tokenizer_dir(self) -> str:
        return inside(self.root, self.tokenizer.get("path", TOKENIZER),
                      f"{self.manifest_path}: tokenizer.path")

    def tokenizer_files(self) -> List[str]:
        """The files of the saved tokenizer, each checked to be inside the dataset."""
        return [check_inside(self.root, path, "tokenizer file")
                for path in storage.list_files(self.tokenizer_dir)]

    @property
    def pack_length(self) -> int:
        """The run's --pack-length (0: one example per row)."""
        value = (self.manifest.get("config") or {}).get("pack_length") or 0
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def added_tokens(self) -> List[str]:
        return list(self.tokenizer.get("added_tokens") or [])

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.tokenizer["fingerprint"]

    @property
    def fingerprint(self) -> str:
        """The run fingerprint: changes with any input byte, option, tokenizer or code change."""
        return str(self.manifest.get("fingerprint", ""))


def open_output(location: str) -> OutputDataset:
    """The run an `sftprep run --output` folder holds (its published LATEST run, if any)."""
    root = resolve_latest(location)
    if not storage.exists(storage.join(root, MANIFEST)):
        raise DatasetError(f"{location}: no {MANIFEST} in {root}; point at the --output of a "
                           "finished `sftprep run`")
    return OutputDataset(location, root, read_manifest(root))

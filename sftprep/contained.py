"""Contained readers: the paths a dataset names stay inside it, and its manifest and LATEST are
read with their shape checked.

A manifest, a LATEST pointer and a dataset folder may come from anyone. Every path read from
them goes through `inside`, which refuses absolute paths, other schemes or buckets, `..` that
climbs out, and (on local disk) symlinks that lead out of the root; `check_inside` does the same
for a path found by listing the root (a symlinked shard). The trainer, `sftprep.ecosystem` and
`publish.resolve` all use these, so there is one rule. Everything they refuse raises
`DatasetError`, a `ConfigError`, which every command prints as one line.

Imports nothing of Beam or pyarrow at module level; `read_manifest` reaches storage through
`sftprep.pipeline.files` on first use.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from sftprep.config import ConfigError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists files; thousands of shards stay far below
MAX_LATEST_BYTES = 64 << 10


class DatasetError(ConfigError):
    """A dataset that cannot be read as sftprep writes it: a path leading out of it, a
    malformed manifest.json or LATEST, a shard that is not Parquet or holds bad values."""


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
    sftprep.contained.DatasetError: LATEST path '../other/x' leads out of gs://b/out
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
    from sftprep.pipeline import files

    try:
        with files.open_read(path) as handle:
            data = handle.read(limit + 1)
    except IsADirectoryError:
        raise DatasetError(f"{path} is a folder, not a file") from None
    except OSError as err:
        raise DatasetError(f"{path} cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise DatasetError(f"{path} is larger than {limit >> 10} KiB; it is not a file "
                           "sftprep wrote")
    return data


def read_manifest(root: str) -> Dict[str, Any]:
    """The checked manifest.json of a dataset folder (not following LATEST)."""
    from sftprep.pipeline import files

    path = files.join(root, MANIFEST)
    return parse_manifest(read_small(path, MAX_MANIFEST_BYTES), path)


@contextlib.contextmanager
def parquet_errors(path: str) -> Iterator[None]:
    """Turns what pyarrow raises on a file that is not (valid) Parquet into one line."""
    import pyarrow as pa

    try:
        yield
    except DatasetError:
        raise
    except (pa.ArrowException, OSError) as err:
        text = str(err).strip()
        detail = text.splitlines()[0] if text else type(err).__name__
        raise DatasetError(f"{path}: not a readable Parquet file ({detail[:300]})") from None


TOKEN_COLUMNS = ("input_ids", "labels")


def check_schema(schema: Any, path: str, columns: Sequence[str] = TOKEN_COLUMNS) -> None:
    """Each of `columns` is there, `input_ids` and `labels` as lists of integers and
    `example_id` as a string; else a DatasetError saying which column is what."""
    import pyarrow as pa

    for name in columns:
        index = schema.get_field_index(name)
        if index < 0:
            raise DatasetError(f"{path}: no {name} column (columns: "
                               f"{', '.join(schema.names)[:300]}); not a shard of `sftprep run`")
        kind = schema.field(index).type
        if name in TOKEN_COLUMNS:
            wanted = "a list of integers"
            ok = ((pa.types.is_list(kind) or pa.types.is_large_list(kind))
                  and pa.types.is_integer(kind.value_type))
        else:
            wanted = "a string"
            ok = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if not ok:
            raise DatasetError(f"{path}: column {name} is {kind}, expected {wanted}")


def check_parquet(path: str, columns: Sequence[str] = TOKEN_COLUMNS) -> None:
    """Read the footer of one shard (local or gs://) and check its schema."""
    import pyarrow.parquet as pq

    from sftprep.pipeline import files

    with parquet_errors(path), files.open_read(path) as handle:
        check_schema(pq.ParquetFile(handle).schema_arrow, path, columns)

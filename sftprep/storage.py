"""Files on local disk and in Cloud Storage (gs://), without Beam: one small API over pyarrow.fs.

The trainer, `inspect`, `sftprep.ecosystem` and the launcher read and write through this
module; Beam's workers keep Beam's own `FileSystems`. pyarrow.fs was chosen over fsspec/gcsfs
because pyarrow is already a dependency, its GCS client streams Parquet natively (column and
row-group reads fetch only the byte ranges needed), and it needs no extra package on workers.

Credentials follow Google's default resolution (Application Default Credentials, the
service account on GCE/GKE/Dataflow). With STORAGE_EMULATOR_HOST set (a local emulator) access
is anonymous over the scheme the variable names.

Paths are strings: a local path, or `gs://bucket/name`. Globs: `*` and `?` stop at `/`, `**`
crosses it, as Beam matches them.
"""

from __future__ import annotations

import datetime
import functools
import os
import posixpath
import re
from typing import List, Tuple

import pyarrow.fs as pafs

from sftprep.errors import StorageError

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GCS_RETRY_SECONDS = 60  # how long a failing GCS call is retried before it is an error


def is_remote(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """`base` and `parts` joined with `/` on gs://, with the OS separator locally.

    >>> join("gs://b/out", "train", "x.parquet")
    'gs://b/out/train/x.parquet'
    """
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


@functools.lru_cache(maxsize=4)
def _gcs(emulator: str) -> pafs.FileSystem:
    retry = datetime.timedelta(seconds=GCS_RETRY_SECONDS)
    if emulator:
        scheme, _, host = emulator.rpartition("://")
        return pafs.GcsFileSystem(anonymous=True, scheme=scheme or "http",
                                  endpoint_override=host.rstrip("/"), retry_time_limit=retry)
    return pafs.GcsFileSystem(retry_time_limit=retry)


def _resolve(path: str) -> Tuple[pafs.FileSystem, str]:
    """The file system holding `path` and the path as that file system names it."""
    path = str(path)
    if path.startswith("gs://"):
        return _gcs(os.environ.get(EMULATOR_ENV, "")), path[len("gs://"):]
    if is_remote(path):
        raise StorageError(f"{path}: only local paths and gs:// are supported here")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _url(path: str, fs_path: str) -> str:
    return "gs://" + fs_path if str(path).startswith("gs://") else fs_path


def _failure(path: str, err: Exception) -> StorageError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StorageError(f"{path}: {first}")


def exists(path: str) -> bool:
    fs, inner = _resolve(path)
    try:
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    except OSError as err:
        raise _failure(path, err) from None


def is_file(path: str) -> bool:
    fs, inner = _resolve(path)
    try:
        return fs.get_file_info(inner).type == pafs.FileType.File
    except OSError as err:
        raise _failure(path, err) from None


def read_bytes(path: str) -> bytes:
    fs, inner = _resolve(path)
    try:
        with fs.open_input_stream(inner) as handle:
            return handle.read()
    except (OSError, ValueError) as err:
        raise _failure(path, err) from None


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StorageError(f"{path}: not UTF-8 text (byte {err.start})") from None


def open_read(path: str):
    """A seekable binary file: Parquet readers fetch only the byte ranges they need."""
    fs, inner = _resolve(path)
    try:
        return fs.open_input_file(inner)
    except (OSError, ValueError) as err:
        raise _failure(path, err) from None


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file (an object upload on gs://), creating local parent folders."""
    fs, inner = _resolve(path)
    try:
        if not is_remote(path):
            os.makedirs(os.path.dirname(inner), exist_ok=True)
        with fs.open_output_stream(inner) as handle:
            handle.write(data)
    except OSError as err:
        raise _failure(path, err) from None


def replace_bytes(path: str, data: bytes) -> None:
    """Write a small file readers must see whole or not at all: a rename over the old file on
    local disk, a single upload (atomic for readers) on gs://."""
    if is_remote(path):
        write_bytes(path, data)
        return
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = f"{target}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def delete(path: str) -> None:
    """Delete a file, or a folder (a prefix on gs://) with everything under it; no error when
    there is nothing."""
    fs, inner = _resolve(path)
    try:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.Directory and not is_remote(path):
            fs.delete_dir(inner)
        elif info.type == pafs.FileType.Directory:  # a prefix: its objects, one by one
            for found in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
                if found.type == pafs.FileType.File:
                    fs.delete_file(found.path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(inner)
    except OSError as err:
        raise _failure(path, err) from None


def list_files(folder: str, recursive: bool = False) -> List[str]:
    """The files under `folder` (directly, or at any depth), sorted; [] when it does not exist."""
    fs, inner = _resolve(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=recursive,
                                                   allow_not_found=True))
    except OSError as err:
        raise _failure(folder, err) from None
    return sorted(_url(folder, i.path) for i in infos if i.type == pafs.FileType.File)


def glob_regex(pattern: str) -> "re.Pattern[str]":
    """A glob as a regular expression, as Beam's FileSystem.translate_pattern reads it: `*`
    stops at `/`, `**` crosses it, `?` is any one character, `[...]` a class (`[!...]` its
    complement). Use with `fullmatch`.

    >>> bool(glob_regex("gs://b/d/*.jsonl").fullmatch("gs://b/d/x.jsonl"))
    True
    >>> bool(glob_regex("gs://b/d/*.jsonl").fullmatch("gs://b/d/e/x.jsonl"))
    False
    >>> bool(glob_regex("gs://b/**.jsonl").fullmatch("gs://b/d/e/x.jsonl"))
    True
    """
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*" and pattern.startswith("*", index):
            out.append(".*")
            index += 1
        elif char == "*":
            out.append(r"[^/\\]*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = index + (pattern.startswith("!", index))
            end += pattern.startswith("]", end)
            end = pattern.find("]", end)
            if end < 0:
                out.append(re.escape(char))
                continue
            body = pattern[index:end].replace("\\", "\\\\")
            index = end + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def match(pattern: str) -> List[str]:
    """The files a glob names (or the one file a plain path names), sorted; [] for none."""
    wild = re.search(r"[*?\[]", pattern)
    if not wild:
        return [pattern] if is_file(pattern) else []
    prefix = pattern[:wild.start()]
    base = prefix.rsplit("/", 1)[0] if "/" in prefix else "."
    rest = pattern[len(base) + 1:] if "/" in prefix else pattern  # after base's last "/"
    local = not is_remote(pattern)
    regex = glob_regex(os.path.join(os.path.abspath(base), rest) if local else pattern)
    found = list_files(base, recursive="**" in rest or "/" in rest)
    hits = [path for path in found if regex.fullmatch(path)]
    if local and not os.path.isabs(pattern):
        hits = [os.path.relpath(path) for path in hits]
    return sorted(hits)

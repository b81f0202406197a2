"""File-system work of the launcher and the writers: local paths directly, others (gs://)
through Beam's FileSystems.

Beam is imported only for a remote path, so a local run that executes without Beam
(`inline.py`) never loads it. Local paths behave exactly as Beam's local file system treats
them (the same joins, globs, parent folders on create, errors of `open`).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from sftprep import storage
from sftprep.errors import ConfigError
from sftprep.pipeline import gcs

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
OUTPUT_ARTIFACTS = ("train", "validation", "rejected", "tokenizer", "stats.json", "_pieces",
                    "report.html", "report")
PIECES = "_pieces"  # examples on their way to their shard; deleted when the run finishes
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class InputFile:
    """An input file and what identifies its content: sha256 for local files (hashed once at
    launch), the object's generation and checksums for gs:// (from metadata, never downloaded).

    `mtime_ns` (local files) only serves the end-of-run check that the file did not change; it
    is not part of the fingerprint (touching a file does not make it a different input)."""

    path: str
    size: int
    sha256: Optional[str] = None
    generation: Optional[int] = None
    crc32c: Optional[str] = None
    md5: Optional[str] = None
    mtime_ns: Optional[int] = dataclasses.field(default=None, compare=False)

    def as_dict(self) -> Dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None and k != "mtime_ns"}


def _beam():
    """Beam's FileSystems, for a remote path (imported on first use: see the docstring)."""
    from apache_beam.io.filesystems import FileSystems

    gcs.use_anonymous_access()
    return FileSystems


def _open_remote(path: str):
    from apache_beam.io.filesystem import CompressionTypes

    return _beam().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def join(base: str, *parts: str) -> str:
    return _beam().join(base, *parts) if storage.is_remote(base) else os.path.join(base, *parts)


def _local_match(pattern: str) -> List[str]:
    """A local glob as Beam's FileSystems.match reads it: a plain path names itself when it
    exists; else every file under the folder before the first wildcard, whose path matches
    (`*` stops at `/`, `**` crosses it; see storage.glob_regex). Paths keep the pattern's form
    (relative stays relative)."""
    if pattern.endswith("/"):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        return [pattern] if os.path.exists(pattern) else []
    folder = os.path.dirname(prefix)
    if not os.path.exists(folder):
        return []
    regex = storage.glob_regex(pattern)
    return [path for directory, _, names in os.walk(folder)
            for path in (os.path.join(directory, name) for name in names)
            if regex.fullmatch(path)]


def expand_inputs(patterns: Sequence[str]) -> List[InputFile]:
    """Every file the --input globs name, sorted and unique, fingerprinted (see match_inputs)."""
    return fingerprint_inputs(match_inputs(patterns))


def match_inputs(patterns: Sequence[str]) -> Dict[str, Optional[gcs.ObjectInfo]]:
    """Every file the --input globs name, sorted and unique, as path -> its gs:// object's
    metadata (None for other files); a glob matching nothing is an error. Nothing is read.

    A directory stands for the input files directly inside it. Local inputs are checked before
    anything is opened: each must be a regular file (a FIFO would block the launch forever) with
    a UTF-8 name, and one file named twice (relative and absolute, or through a symlink) is
    read once, under the first of its names in sorted order.
    """
    paths, objects = set(), {}
    for pattern in patterns:
        if pattern.startswith("gs://"):
            found = _gcs_inputs(pattern)
            objects.update(found)
            matched = list(found)
        elif "://" not in pattern and os.path.isdir(pattern):
            try:
                names = os.listdir(pattern)
            except OSError as err:
                raise ConfigError(f"--input {pattern}: {err.strerror}") from None
            matched = [os.path.join(pattern, name) for name in names
                       if name.endswith(INPUT_SUFFIXES)]
        else:
            try:
                matched = match(pattern, strict=True)
            except Exception as err:  # Beam raises BeamIOError for unreachable locations
                raise ConfigError(f"--input {pattern}: {err}") from None
        matched = [p for p in matched if not os.path.basename(p).startswith(".")]
        if not matched:
            raise ConfigError(f"--input matched no files: {pattern}")
        paths.update(matched)
    return {path: objects.get(path) for path in _unique_files(paths)}


def _unique_files(paths: Iterable[str]) -> List[str]:
    """Sorted, each file once: under the first of its names in sorted order."""
    unique: Dict[str, str] = {}  # resolved path -> the name it is read under
    for path in sorted(paths):
        key = path if "://" in path else _checked_local_input(path)
        unique.setdefault(key, path)
    return sorted(unique.values())


def fingerprint_inputs(matched: Mapping[str, Optional[gcs.ObjectInfo]]) -> List[InputFile]:
    """The fingerprint of each matched file (several match_inputs results merged are fine: a
    file under two names is still read once), sorted by path. Local files are hashed here, once;
    gs:// objects take their listed metadata."""
    return [_from_object(path, matched[path]) if matched[path] is not None
            else fingerprint(path) for path in _unique_files(matched)]


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory"))


def _checked_local_input(path: str) -> str:
    """The resolved path of a local input, or a one-line error saying why it cannot be one."""
    shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"--input {shown}: the file name is not valid UTF-8; rename the "
                          "file") from None
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        reason = "a symlink loop" if err.errno == errno.ELOOP else err.strerror
        raise ConfigError(f"--input {path}: {reason}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise ConfigError(f"--input {path} is {kind}, not a regular file")
    return os.path.realpath(path)


def _gcs_inputs(pattern: str) -> Dict[str, gcs.ObjectInfo]:
    """A gs:// glob (or a prefix ending in /, standing for the input files under it)."""
    try:
        if pattern.endswith("/"):
            found = gcs.list_objects(pattern + "**")
            return {path: info for path, info in found.items() if path.endswith(INPUT_SUFFIXES)}
        return gcs.list_objects(pattern)
    except gcs.StorageError as err:
        raise ConfigError(f"--input {pattern}: {err}") from None


def _from_object(path: str, info: gcs.ObjectInfo) -> InputFile:
    return InputFile(path, info.size, generation=info.generation, crc32c=info.crc32c,
                     md5=info.md5)


def fingerprint(path: str) -> InputFile:
    """Size and sha256 of a local file: of its first `size` bytes, the size taken when it was
    opened, which is what the readers read (see BoundedReader)."""
    if "://" in path:  # another Beam file system: no size up front
        return _fingerprint_stream(path)
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        return InputFile(path, status.st_size, _sha256_prefix(handle, status.st_size),
                         mtime_ns=status.st_mtime_ns)


def _sha256_prefix(handle, size: int) -> str:
    """sha256 of a local file's first `size` bytes, its pages dropped from the page cache as it
    goes (see forget_read)."""
    digest = hashlib.sha256()
    done = dropped = 0
    while done < size:
        chunk = handle.read(min(size - done, 1 << 20))
        if not chunk:
            break
        done += len(chunk)
        digest.update(chunk)
        if done - dropped >= DROP_BEHIND_BYTES:
            _drop_pages(handle.fileno(), dropped, done - dropped)
            dropped = done
    _drop_pages(handle.fileno(), dropped, done - dropped)
    return digest.hexdigest()


DROP_BEHIND_BYTES = 64 << 20  # how far the launch's hash reads before dropping what it read


def forget_read(path: str, start: int, length: int) -> None:
    """Drop bytes [start, start + length) of a local input from the page cache once they are
    read (nothing for remote paths, nor where the platform has no posix_fadvise).

    A run reads each input byte a fixed number of times (the launch's hash, then the range
    that holds it, whose newlines the launcher counts as the range starts) and never again, so
    what it read need not stay cached: the page cache then stays a few ranges large whatever the
    input's size, instead of growing by the input and pushing out what other programs (and the
    run's own piece files) have cached; on a VM whose fresh memory costs the guest CPU, it also
    saves that (bench/RESULTS.md, "Reading past the page cache"). A later run reads the input
    from disk again."""
    if storage.is_remote(path) or not hasattr(os, "posix_fadvise"):
        return
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return  # gone or unreadable now: the run's own checks say so
    try:
        _drop_pages(descriptor, start, length)
    finally:
        os.close(descriptor)


def _drop_pages(descriptor: int, start: int, length: int) -> None:
    if length > 0 and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(descriptor, start, length, os.POSIX_FADV_DONTNEED)


def _fingerprint_stream(path: str) -> InputFile:
    digest = hashlib.sha256()
    size = 0
    with _open_remote(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            size += len(chunk)
            digest.update(chunk)
    return InputFile(path, size, digest.hexdigest())


INPUT_STATE = "_input_state"  # the key of manifest_base holding what input_change checks


def input_state(inputs: Sequence[InputFile]) -> List[Dict[str, object]]:
    """What the end-of-run check needs of each input (its fingerprint and, locally, mtime)."""
    return [{**f.as_dict(), "mtime_ns": f.mtime_ns} for f in inputs]


def input_change(state: Dict[str, object]) -> Optional[str]:
    """How an input differs now from its launch-time fingerprint; None when it does not.

    Local files: size, then sha256 when the modification time moved (so the common case costs
    one stat). gs:// objects: the generation (any rewrite makes a new one). Other Beam file
    systems are not checked."""
    path = str(state["path"])
    if "://" in path and not path.startswith("gs://"):
        return None  # another Beam file system: nothing cheap to compare
    try:
        if path.startswith("gs://"):
            info = gcs.object_info(path)
            if info.generation != state.get("generation"):
                return f"{path}: generation {state.get('generation')} -> {info.generation}"
            return None
        status = os.stat(path)
    except (OSError, gcs.StorageError) as err:
        return f"{path}: {getattr(err, 'strerror', None) or err}"
    if status.st_size != state["size"]:
        return f"{path}: {state['size']} -> {status.st_size} bytes"
    if status.st_mtime_ns != state.get("mtime_ns"):
        with open(path, "rb") as handle:
            if _sha256_prefix(handle, status.st_size) != state.get("sha256"):
                return f"{path}: same size, different sha256"
    return None


class BoundedReader(io.RawIOBase):
    """A read-only view of the first `size` bytes of a seekable binary stream: readers stop
    where the launch-time fingerprint stopped, whatever was appended since."""

    def __init__(self, stream, size: int):
        super().__init__()
        self._stream, self._size, self._position = stream, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), max(self._size - self._position, 0))
        if wanted == 0:
            return 0
        data = self._stream.read(wanted)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._position + offset,
                  io.SEEK_END: self._size + offset}[whence]
        self._stream.seek(min(max(target, 0), self._size))
        self._position = max(target, 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


def open_input(path: str, size: int):
    """An input file, buffered, cut at `size` bytes (its size when it was fingerprinted)."""
    return io.BufferedReader(BoundedReader(open_read(path), size), buffer_size=1 << 20)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file, creating local parent folders."""
    if storage.is_remote(path):
        from apache_beam.io.filesystem import CompressionTypes

        with _beam().create(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        return
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def read_bytes(path: str) -> bytes:
    with open_read(path) as handle:
        return handle.read()


def delete(paths: Sequence[str]) -> None:
    """Delete files (and local folders, with what they hold)."""
    remote = [p for p in paths if storage.is_remote(p)]
    if remote:
        _beam().delete(remote)
    for path in (p for p in paths if not storage.is_remote(p)):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def delete_tree(path: str) -> None:
    """Delete a directory (a prefix on object stores) if it exists."""
    if not storage.is_remote(path):
        if os.path.exists(path):
            delete([path])
        return
    try:
        _beam().delete([path + "/"])
    except Exception:  # Beam raises BeamIOError when an object store prefix is empty
        if exists(path):
            raise


_LOCAL_COPIES: Dict[str, str] = {}


def local_directory(location: str) -> str:
    """A folder on local disk with the files of `location`: itself, or for gs:// a copy fetched
    once per process (the tokenizer: tokenizers and transformers only read local files)."""
    if "://" not in location:
        return location
    if location not in _LOCAL_COPIES:
        try:
            found = match(join(location.rstrip("/"), "*"), strict=True)
        except Exception as err:  # Beam raises BeamIOError for unreachable locations
            raise ConfigError(f"{location}: {gcs.describe_error(location, err) or err}") from None
        if not found:
            raise ConfigError(f"{location} holds no files")
        local = tempfile.mkdtemp(prefix="sftprep-")
        for path in found:
            with open(os.path.join(local, path.rsplit("/", 1)[1]), "wb") as handle:
                handle.write(read_bytes(path))
        _LOCAL_COPIES[location] = local
    return _LOCAL_COPIES[location]


def drop_local_copies() -> None:
    while _LOCAL_COPIES:
        shutil.rmtree(_LOCAL_COPIES.popitem()[1], ignore_errors=True)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


# Readers outside the pipeline (the trainer) reach files through these, so that gs:// works
# wherever a local path does.


def exists(path: str) -> bool:
    return _beam().exists(path) if storage.is_remote(path) else os.path.exists(path)


def match(pattern: str, strict: bool = False) -> List[str]:
    """The paths a glob names, sorted; an empty list when nothing matches. `strict`: a
    location that cannot be listed is an error rather than no match."""
    if not storage.is_remote(pattern):
        return sorted(_local_match(pattern))
    try:
        found = _beam().match([pattern])[0].metadata_list
    except Exception:  # Beam raises BeamIOError for a pattern that matches nothing
        if strict:
            raise
        return []
    return sorted(m.path for m in found)


def open_read(path: str):
    """A seekable binary file (pyarrow.parquet.ParquetFile reads only the parts it needs)."""
    return _open_remote(path) if storage.is_remote(path) else open(path, "rb")


def replace_bytes(path: str, data: bytes) -> None:
    """Write a small file that readers must see whole or not at all: on local disk a rename
    over the old file, on object stores a single upload (atomic for readers)."""
    if "://" in path:
        write_bytes(path, data)
    else:
        storage.replace_bytes(path, data)

"""File-system work of the launcher and the writers, through Beam's FileSystems (local or gs://)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftprep.config import ConfigError
from sftprep.pipeline import gcs

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
OUTPUT_ARTIFACTS = ("train", "validation", "rejected", "tokenizer", "stats.json", "_pieces",
                    "report.html", "report")
PIECES = "_pieces"  # examples on their way to their shard; deleted when the run finishes
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class InputFile:
    """An input file and what identifies its content: sha256 for local files (hashed once at
    launch), the object's generation and checksums for gs:// (from metadata, never downloaded)."""

    path: str
    size: int
    sha256: Optional[str] = None
    generation: Optional[int] = None
    crc32c: Optional[str] = None
    md5: Optional[str] = None

    def as_dict(self) -> Dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def expand_inputs(patterns: Sequence[str]) -> List[InputFile]:
    """Every file the --input globs name, sorted and unique; a glob matching nothing is an error.

    A directory stands for the input files directly inside it.
    """
    paths, objects = set(), {}
    for pattern in patterns:
        if pattern.startswith("gs://"):
            found = _gcs_inputs(pattern)
            objects.update(found)
            matched = list(found)
        elif "://" not in pattern and os.path.isdir(pattern):
            matched = [os.path.join(pattern, name) for name in os.listdir(pattern)
                       if name.endswith(INPUT_SUFFIXES)]
        else:
            try:
                result = FileSystems.match([pattern])[0]
            except Exception as err:  # Beam raises BeamIOError for unreachable locations
                raise ConfigError(f"--input {pattern}: {err}") from None
            matched = [m.path for m in result.metadata_list]
        matched = [p for p in matched if not os.path.basename(p).startswith(".")]
        if not matched:
            raise ConfigError(f"--input matched no files: {pattern}")
        paths.update(matched)
    return [_from_object(path, objects[path]) if path in objects else fingerprint(path)
            for path in sorted(paths)]


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


def source_names(paths: Sequence[str]) -> Dict[str, str]:
    """What the `source` column says for each input: its path relative to the deepest folder
    holding all inputs, so the same files give the same bytes on local disk or in a bucket.

    >>> source_names(["gs://b/data/x.jsonl", "gs://b/data/more/y.jsonl"])
    {'gs://b/data/x.jsonl': 'x.jsonl', 'gs://b/data/more/y.jsonl': 'more/y.jsonl'}
    """
    parts = [path.split("/") for path in paths]
    common = os.path.commonprefix([p[:-1] for p in parts]) if parts else []
    return {path: "/".join(p[len(common):]) for path, p in zip(paths, parts)}


def fingerprint(path: str) -> InputFile:
    digest = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
    return InputFile(path, size, digest.hexdigest())


def prepare_output(output: str) -> None:
    """Make OUT ready for a new run: the old manifest goes first, so nothing half-rewritten is
    ever presented as complete; then the previous run's artifacts. A non-empty local directory
    that holds no sftprep output is refused rather than written into."""
    if "://" not in output:
        _check_local_output(output)
    else:
        _check_writable(output)
    _delete([join(output, MANIFEST)])
    for name in OUTPUT_ARTIFACTS:
        if "." in name:
            _delete([join(output, name)])
        else:
            delete_tree(join(output, name))


def _check_local_output(output: str) -> None:
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output} exists and is not a directory")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output {output} cannot be created: {err.strerror}") from None
    if not os.access(output, os.W_OK):
        raise ConfigError(f"--output {output} is not writable")
    entries = set(os.listdir(output))
    if entries and not entries & (set(OUTPUT_ARTIFACTS) | {MANIFEST}):
        raise ConfigError(f"--output {output} is not empty and holds no sftprep output; "
                          "choose an empty or new directory")


def _check_writable(output: str) -> None:
    """Fail at launch, in one line, when an object store location cannot be written."""
    probe = join(output, ".sftprep-write-check")
    try:
        write_bytes(probe, b"")
        FileSystems.delete([probe])
    except Exception as err:  # the GCS client raises a range of types for 403 and 404
        raise ConfigError(f"--output {output}: {gcs.describe_error(output, err) or err}") from None


def _delete(paths: Sequence[str]) -> None:
    existing = [p for p in paths if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def delete_tree(path: str) -> None:
    """Delete a directory (a prefix on object stores) if it exists."""
    if FileSystems.exists(path) or "://" in path:
        try:
            FileSystems.delete([path + "/" if "://" in path else path])
        except Exception:  # Beam raises BeamIOError when an object store prefix is empty
            if FileSystems.exists(path):
                raise


_LOCAL_COPIES: Dict[str, str] = {}


def local_directory(location: str) -> str:
    """A folder on local disk with the files of `location`: itself, or for gs:// a copy fetched
    once per process (the tokenizer: tokenizers and transformers only read local files)."""
    if "://" not in location:
        return location
    if location not in _LOCAL_COPIES:
        import tempfile

        pattern = join(location.rstrip("/"), "*")
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # Beam raises BeamIOError for unreachable locations
            raise ConfigError(f"{location}: {gcs.describe_error(location, err) or err}") from None
        if not found:
            raise ConfigError(f"{location} holds no files")
        local = tempfile.mkdtemp(prefix="sftprep-")
        for metadata in found:
            name = metadata.path.rsplit("/", 1)[1]
            with open(os.path.join(local, name), "wb") as handle:
                handle.write(read_bytes(metadata.path))
        _LOCAL_COPIES[location] = local
    return _LOCAL_COPIES[location]


def drop_local_copies() -> None:
    import shutil

    while _LOCAL_COPIES:
        shutil.rmtree(_LOCAL_COPIES.popitem()[1], ignore_errors=True)


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read().decode("utf-8")


# Readers outside the pipeline (the trainer) reach files through these, so that gs:// works
# wherever a local path does.


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def match(pattern: str) -> List[str]:
    """The paths a glob names, sorted; an empty list when nothing matches."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises BeamIOError for a pattern that matches nothing
        return []
    return sorted(m.path for m in found)


def open_read(path: str):
    """A seekable binary file (pyarrow.parquet.ParquetFile reads only the parts it needs)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def replace_bytes(path: str, data: bytes) -> None:
    """Write a small file that readers must see whole or not at all: on local disk a rename
    over the old file, on object stores a single upload (atomic for readers)."""
    if "://" in path:
        write_bytes(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)

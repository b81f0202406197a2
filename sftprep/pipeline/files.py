"""File-system work of the launcher and the writers, through Beam's FileSystems (local or gs://)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, List, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftprep.config import ConfigError

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
OUTPUT_ARTIFACTS = ("train", "validation", "rejected", "tokenizer", "stats.json", "_pieces")
PIECES = "_pieces"  # examples on their way to their shard; deleted when the run finishes
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    sha256: str

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def expand_inputs(patterns: Sequence[str]) -> List[InputFile]:
    """Every file the --input globs name, sorted and unique; a glob matching nothing is an error.

    A directory stands for the input files directly inside it.
    """
    paths = set()
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
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
    return [fingerprint(path) for path in sorted(paths)]


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
    _delete([join(output, MANIFEST)])
    _delete([join(output, name) for name in OUTPUT_ARTIFACTS])


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


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read().decode("utf-8")

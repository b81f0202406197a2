"""Split an input file's bytes into raw records, with their line numbers, never losing one.

Works on any binary file object, so the Beam side can hand it a local or gs:// stream.
`.gz` is decompressed here; a corrupt stream ends the file with one `unreadable_file` record.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
import zlib
from typing import BinaryIO, Iterator, List, Optional

from sftprep.transforms.records import RawRecord

RAW_PREVIEW_BYTES = 4096
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class FileRange:
    """A byte range of an input file, the unit of parallel reading.

    A range owns the lines that start inside [start, end). `.gz` and `.json` files are read
    whole (end is None): neither can be entered in the middle.
    """

    path: str
    index: int
    start: int
    end: Optional[int]
    source: str = ""  # what records name as their source; the path when empty

    @property
    def source_name(self) -> str:
        return self.source or self.path


def splittable(path: str) -> bool:
    name = path.lower()
    return not (name.endswith(".gz") or name.endswith(".json"))


def plan_ranges(path: str, size: int, range_bytes: int, source: str = "") -> List[FileRange]:
    """
    >>> [(r.start, r.end) for r in plan_ranges("a.jsonl", 25, 10)]
    [(0, 10), (10, 20), (20, 25)]
    >>> [(r.start, r.end) for r in plan_ranges("a.jsonl.gz", 25, 10)]
    [(0, None)]
    """
    if not splittable(path) or size <= range_bytes:
        return [FileRange(path, 0, 0, None, source)]
    return [FileRange(path, index, start, min(start + range_bytes, size), source)
            for index, start in enumerate(range(0, size, range_bytes))]


def count_newlines(stream: BinaryIO, file_range: FileRange) -> int:
    """Newline bytes in [start, end): the line numbering of later ranges adds these up."""
    stream.seek(file_range.start)
    remaining = (file_range.end or 0) - file_range.start
    count = 0
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 24))
        if not chunk:
            break
        count += chunk.count(b"\n")
        remaining -= len(chunk)
    return count


def iter_range_records(file_range: FileRange, stream: BinaryIO, newlines_before: int,
                       max_record_bytes: int) -> Iterator[RawRecord]:
    """The records of one range; `newlines_before` counts the newlines of the file before it."""
    if file_range.end is None:
        yield from iter_raw_records(file_range.source_name, stream, max_record_bytes)
        return
    position, lines_before = file_range.start, newlines_before
    if position > 0:
        stream.seek(position - 1)
        if stream.read(1) != b"\n":  # mid-line: that line belongs to the previous range
            skipped = _skip_rest_of_line(stream)
            position += skipped
            lines_before += 1
    yield from _iter_lines(file_range.source_name, stream, max_record_bytes, lines_before,
                           position, file_range.end)


def iter_raw_records(path: str, stream: BinaryIO, max_record_bytes: int) -> Iterator[RawRecord]:
    """Yield every record of one file: `.jsonl` lines or `.json` array elements.

    Blank lines are not records. A line over `max_record_bytes` is skipped over without being
    held in memory and comes back as a `record_too_large` record carrying a preview.
    """
    name = path.lower()
    if name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
        name = name[:-3]
    try:
        if name.endswith(".json"):
            yield from _iter_json_document(path, stream, max_record_bytes)
        else:
            yield from _iter_lines(path, stream, max_record_bytes)
    except (OSError, EOFError, zlib.error) as err:  # corrupt or truncated compressed stream
        yield RawRecord(path, 0, "", error="unreadable_file", detail=f"{type(err).__name__}: {err}")


def _iter_lines(path: str, stream: BinaryIO, max_record_bytes: int, lines_before: int = 0,
                position: int = 0, end: Optional[int] = None) -> Iterator[RawRecord]:
    """Lines that start before byte `end` (all when None), numbered after `lines_before`."""
    line_no = lines_before
    while end is None or position < end:
        data = stream.readline(max_record_bytes + 1)
        if not data:
            return
        line_no += 1
        position += len(data)
        if len(data) > max_record_bytes and not data.endswith(b"\n"):
            rest = _skip_rest_of_line(stream)
            position += rest
            yield RawRecord(path, line_no, _decode_lossy(data[:RAW_PREVIEW_BYTES]),
                            error="record_too_large",
                            detail=f"{len(data) + rest} bytes > --max-record-bytes "
                                   f"{max_record_bytes}; raw holds the first {RAW_PREVIEW_BYTES} bytes")
            continue
        if line_no == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if not data.strip():
            continue
        yield _decode_record(path, line_no, data.rstrip(b"\r\n"))


def _skip_rest_of_line(stream: BinaryIO) -> int:
    skipped = 0
    while True:
        chunk = stream.readline(_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _decode_record(path: str, line_no: int, data: bytes) -> RawRecord:
    try:
        return RawRecord(path, line_no, data.decode("utf-8"))
    except UnicodeDecodeError as err:
        return RawRecord(path, line_no, _decode_lossy(data), error="invalid_utf8",
                         detail=f"byte {err.start}: {err.reason}; raw shows U+FFFD for bad bytes")


def _decode_lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _iter_json_document(path: str, stream: BinaryIO, max_record_bytes: int) -> Iterator[RawRecord]:
    """A `.json` file holds one array of records (or one record). Elements are numbered from 1.

    A file that is not valid JSON as a whole is read as JSON Lines instead, so a mislabelled
    `.jsonl` still works and each bad line is rejected on its own.
    """
    data = stream.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        yield from _iter_lines(path, io.BytesIO(data), max_record_bytes)
        return
    elements = document if isinstance(document, list) else [document]
    for index, element in enumerate(elements, start=1):
        text = json.dumps(element, ensure_ascii=False)
        if _SURROGATE_RE.search(text):  # keep lone surrogates as escapes: they stay valid UTF-8
            text = json.dumps(element)
        if len(text.encode("utf-8")) > max_record_bytes:
            yield RawRecord(path, index, text[:RAW_PREVIEW_BYTES], error="record_too_large",
                            detail=f"element over --max-record-bytes {max_record_bytes}")
        else:
            yield RawRecord(path, index, text)

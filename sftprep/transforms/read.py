"""Split an input file's bytes into raw records, with their line numbers, never losing one.

Works on any binary file object, so the Beam side can hand it a local or gs:// stream.
`.gz` is decompressed here; a corrupt stream ends the file with one `unreadable_file` record.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import zlib
from typing import BinaryIO, Iterator, List, Optional

from sftprep.transforms.records import RawRecord

RAW_PREVIEW_BYTES = 4096
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class FileRange:
    """A byte range of an input file, the unit of parallel reading.

    A range owns the lines that start inside [start, end). A `.gz` or `.json` file is one
    range (end is None), read from its start: neither can be entered in the middle.
    """

    path: str
    index: int
    start: int
    end: Optional[int]
    source: str = ""  # what records name as their source; the path when empty

    @property
    def source_name(self) -> str:
        return self.source or self.path


def plan_ranges(path: str, size: int, range_bytes: int, source: str = "") -> List[FileRange]:
    """
    >>> [(r.start, r.end) for r in plan_ranges("a.jsonl", 25, 10)]
    [(0, 10), (10, 20), (20, 25)]
    >>> [(r.start, r.end) for r in plan_ranges("a.jsonl.gz", 25, 10)]
    [(0, None)]
    """
    if path.lower().endswith((".gz", ".json")) or size <= range_bytes:
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
            position += _skip_rest_of_line(stream)
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

    The array is read as a stream, element by element, in bounded memory: whitespace between
    elements is skipped without being held, and an element over `max_record_bytes` is scanned
    past, keeping a preview, and comes back as `record_too_large`. A record's text is its
    bytes as the file holds them. When the array's own structure breaks (a missing comma or
    bracket, text after the closing bracket), one `invalid_json` record says where and the rest
    of the file is not read.

    A file that does not hold one array or one object is read as JSON Lines instead, from its
    start (the stream is rewound), so a mislabelled `.jsonl` still works and each bad line is
    rejected on its own.
    """
    scanner = _JsonScanner(stream)
    first = scanner.skip_whitespace(bom=True)
    if first == b"[":
        yield from _iter_json_array(path, scanner, max_record_bytes)
        return
    if first == b"{":
        value = scanner.scan_value(max_record_bytes)
        if value.complete and scanner.skip_whitespace() is None:
            yield _element_record(path, 1, value, max_record_bytes)
            return
    stream.seek(0)
    yield from _iter_lines(path, stream, max_record_bytes)


def _iter_json_array(path: str, scanner: "_JsonScanner", max_record_bytes: int
                     ) -> Iterator[RawRecord]:
    scanner.take(1)  # "["
    index = 0
    if scanner.skip_whitespace() == b"]":
        scanner.take(1)
    else:
        while True:
            following = scanner.skip_whitespace()
            if following is None or following in b",]":
                yield _broken_array(path, index, scanner, "expected an element")
                return
            value = scanner.scan_value(max_record_bytes)
            index += 1
            yield _element_record(path, index, value, max_record_bytes)
            if not value.complete:
                yield _broken_array(path, index, scanner, "the element is not closed")
                return
            following = scanner.skip_whitespace()
            if following == b",":
                scanner.take(1)
                continue
            if following == b"]":
                scanner.take(1)
                break
            yield _broken_array(path, index, scanner, "the file ends before the closing ']'"
                                if following is None else "expected ',' or ']'")
            return
    if scanner.skip_whitespace() is not None:
        yield _broken_array(path, index, scanner, "text follows the closing ']'")


def _element_record(path: str, index: int, value: "_Scanned", max_record_bytes: int) -> RawRecord:
    if value.size > max_record_bytes:
        return RawRecord(path, index, _decode_lossy(value.data[:RAW_PREVIEW_BYTES]),
                         error="record_too_large",
                         detail=f"{value.size} bytes > --max-record-bytes {max_record_bytes}; "
                                f"raw holds the first {RAW_PREVIEW_BYTES} bytes")
    return _decode_record(path, index, value.data.rstrip(_WHITESPACE))


def _broken_array(path: str, index: int, scanner: "_JsonScanner", problem: str) -> RawRecord:
    preview = scanner.peek(256)
    return RawRecord(path, index + 1, _decode_lossy(preview), error="invalid_json",
                     detail=f"the JSON array breaks at byte {scanner.offset} after element "
                            f"{index}: {problem}; the rest of the file is not read")


_WHITESPACE = b" \t\r\n"
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")
_OUTSIDE_STRING = re.compile(rb'["\[\]{},]')  # the bytes that matter outside a string
_INSIDE_STRING = re.compile(rb'["\\]')


@dataclasses.dataclass
class _Scanned:
    data: bytes  # the value's bytes, or only their first RAW_PREVIEW_BYTES when over the limit
    size: int
    complete: bool  # False: the file ended inside the value


class _JsonScanner:
    """Walks a JSON text in chunks: skips whitespace, and finds where one value ends by its
    strings and brackets (the value itself is parsed later, record by record)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buffer = b""
        self.position = 0  # in buffer
        self.offset = 0  # bytes of the file consumed before buffer[position]

    def _fill(self) -> bool:
        """Replace the consumed buffer with the next chunk; False at the end of the file."""
        chunk = self.stream.read(_CHUNK)
        if not chunk:
            return False
        self.buffer = self.buffer[self.position:] + chunk
        self.position = 0
        return True

    def take(self, count: int) -> None:
        self.position += count
        self.offset += count

    def peek(self, count: int) -> bytes:
        while len(self.buffer) - self.position < count and self._fill():
            pass
        return self.buffer[self.position:self.position + count]

    def skip_whitespace(self, bom: bool = False) -> Optional[bytes]:
        """Skip whitespace (and a leading BOM); the next byte, not consumed, or None at the end."""
        if bom and self.peek(3) == b"\xef\xbb\xbf":
            self.take(3)
        while True:
            match = _NOT_WHITESPACE.search(self.buffer, self.position)
            if match:
                self.take(match.start() - self.position)
                return self.buffer[self.position:self.position + 1]
            self.take(len(self.buffer) - self.position)
            self.buffer, self.position = b"", 0
            if not self._fill():
                return None

    def scan_value(self, limit: int) -> _Scanned:
        """Consume one value: a container up to its closing bracket, a scalar up to the `,`,
        `]` or `}` after it. Bytes past `limit` are counted, not held."""
        opener = self.buffer[self.position:self.position + 1]
        container = opener in (b"[", b"{")
        pieces: List[bytes] = []
        held = size = depth = 0
        in_string = escaped = False
        while True:
            if self.position >= len(self.buffer):
                self.buffer, self.position = b"", 0
                if not self._fill():
                    return _Scanned(b"".join(pieces), size, not container and not in_string)
            buffer, start = self.buffer, self.position
            index, end = start, None
            length = len(buffer)
            while index < length:
                if escaped:
                    escaped = False
                    index += 1
                elif in_string:
                    match = _INSIDE_STRING.search(buffer, index)
                    if match is None:
                        index = length
                    elif buffer[match.start()] == 0x5C:  # backslash: skip the next byte
                        index, escaped = match.start() + 1, True
                    else:
                        index, in_string = match.start() + 1, False
                else:
                    match = _OUTSIDE_STRING.search(buffer, index)
                    if match is None:
                        index = length
                        continue
                    index = match.start()
                    byte = buffer[index]
                    if byte == 0x22:  # '"'
                        in_string = True
                    elif byte in (0x5B, 0x7B):  # '[' '{'
                        depth += 1
                    elif depth == 0:  # ',' ']' '}' ending a scalar
                        end = index
                        break
                    elif byte != 0x2C:  # ']' '}'
                        depth -= 1
                        if depth == 0:
                            end = index + 1
                            break
                    index += 1
            stop = length if end is None else end
            size += stop - start
            if held <= limit:
                piece = buffer[start:stop]
                pieces.append(piece)
                held += len(piece)
                if held > limit:  # over the limit: keep a preview only
                    pieces = [b"".join(pieces)[:RAW_PREVIEW_BYTES]]
            self.take(stop - start)
            if end is not None:
                return _Scanned(b"".join(pieces), size, True)

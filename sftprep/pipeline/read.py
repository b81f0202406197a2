"""Reading inputs by byte ranges, as batches of raw records (Beam's `ReadRawRecords` in graph.py,
and the inline run, read through these).

JSON Lines files are cut into ranges; a first pass counts each range's newlines so every range
knows the line number it starts at, which keeps line numbers exact without reading files
sequentially.
"""

from __future__ import annotations

import itertools
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from sftprep.pipeline import files
from sftprep.pipeline.progress import ReadTally
from sftprep.transforms.read import FileRange, count_newlines, iter_range_records, plan_ranges
from sftprep.transforms.records import RawRecord

DEFAULT_RANGE_BYTES = 16 * 1024 * 1024


def input_ranges(inputs: Sequence[Tuple[str, int, str]], range_bytes: int) -> List[FileRange]:
    """The ranges of every input, (path, size, source name) each, in order."""
    return [r for path, size, source in inputs
            for r in plan_ranges(path, size, range_bytes, source)]


def range_size(chosen: int, workers: int, total_bytes: int) -> int:
    """--range-bytes (`chosen`), or 16 MiB cut down so `workers` processes get 8 ranges each
    (never below 1 MiB): enough ranges for the processes to share the work evenly."""
    if chosen:
        return chosen
    share = total_bytes // (workers * 8) if workers > 1 else DEFAULT_RANGE_BYTES
    return int(min(max(share, 1 << 20), DEFAULT_RANGE_BYTES))


def range_newlines(file_range: FileRange) -> int:
    """The newlines of a range of a JSON Lines file (0 for a file read whole)."""
    if file_range.end is None:
        return 0
    with files.open_read(file_range.path) as stream:
        return count_newlines(stream, file_range)


def newlines_before(file_range: FileRange, counts: Dict[Tuple[str, int], int]) -> int:
    """The newlines of the file before `file_range`, from every range's `range_newlines`."""
    return sum(counts.get((file_range.path, index), 0) for index in range(file_range.index))


def with_lines_before(ranges: Iterable[FileRange]) -> Iterator[Tuple[FileRange, int]]:
    """(range, newlines of its file before it) for each range, in order. A range's newlines
    are counted when the next one is asked for, so a caller that hands ranges to other
    processes as it goes counts while they work rather than before."""
    before: Dict[str, int] = {}
    for file_range in ranges:
        yield file_range, before.get(file_range.path, 0)
        before[file_range.path] = before.get(file_range.path, 0) + range_newlines(file_range)


def read_batches(file_range: FileRange, before: int, size: int, max_record_bytes: int,
                 batch_size: int, tally: Optional[ReadTally] = None
                 ) -> Iterator[List[RawRecord]]:
    """The records of one range in batches of `batch_size`; `before`: newlines of the file
    before it; `size`: the file's size when fingerprinted (whatever was appended since is not
    read). `tally`: progress, credited as batches go (see progress.py)."""
    counted = 0  # bytes credited to progress so far, from the records' lengths
    with files.open_input(file_range.path, size) as stream:
        records = iter_range_records(file_range, stream, before, max_record_bytes)
        for batch in iter(lambda: list(itertools.islice(records, batch_size)), []):
            counted += _credit(tally, batch, file_range)
            yield batch
    whole = size if file_range.end is None else file_range.end - file_range.start
    files.forget_read(file_range.path, file_range.start, whole)  # read for the last time
    if tally:  # the range is done: settle its exact size
        tally.add(0, max(whole - counted, 0))


def _credit(tally: Optional[ReadTally], batch: List[RawRecord], file_range: FileRange) -> int:
    if not tally:
        return 0
    approx = 0
    if file_range.end is not None:
        approx = min(sum(len(r.text) + 1 for r in batch), file_range.end - file_range.start)
    tally.add(len(batch), approx)
    return approx

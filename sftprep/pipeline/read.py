"""Reading inputs in parallel byte ranges, as batches of raw records.

Reading fuses with preparing (no shuffle between them), so a batch is handed over as the list of
`RawRecord`s itself: no encoding on the way (an Arrow round trip cost about 9 us a record).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftprep.pipeline import files, gcs
from sftprep.pipeline.progress import ReadTally
from sftprep.transforms.read import FileRange, count_newlines, iter_range_records, plan_ranges
from sftprep.transforms.records import RawRecord

DEFAULT_RANGE_BYTES = 16 * 1024 * 1024
def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _CountNewlinesFn(gcs.StorageDoFn):
    def process(self, file_range: FileRange):
        if file_range.end is not None:
            with _open(file_range.path) as stream:
                yield (file_range.path, file_range.index), count_newlines(stream, file_range)


class _ReadRangeFn(gcs.StorageDoFn):
    def __init__(self, max_record_bytes: int, batch_size: int, sizes: Dict[str, int],
                 progress_dir: Optional[str] = None):
        self._max_record_bytes = max_record_bytes
        self._batch_size = batch_size
        self._sizes = sizes
        self._progress_dir = progress_dir
        self._tally: Optional[ReadTally] = None

    def setup(self):
        super().setup()
        if self._progress_dir:
            self._tally = ReadTally(self._progress_dir)

    def process(self, file_range: FileRange, newline_counts):
        before = sum(newline_counts.get((file_range.path, index), 0)
                     for index in range(file_range.index))
        batch: List[RawRecord] = []
        counted = 0  # bytes credited to progress so far, from the records' lengths
        # Only the bytes fingerprinted at launch: whatever is appended since is not read.
        with files.open_input(file_range.path, self._sizes[file_range.path]) as stream:
            for record in iter_range_records(file_range, stream, before, self._max_record_bytes):
                batch.append(record)
                if len(batch) >= self._batch_size:
                    counted += self._credit(batch, file_range)
                    yield batch
                    batch = []
        if batch:
            counted += self._credit(batch, file_range)
            yield batch
        if self._tally:  # the range is done: settle its exact size
            size = self._sizes.get(file_range.path, 0) if file_range.end is None \
                else file_range.end - file_range.start
            self._tally.add(0, max(size - counted, 0))

    def _credit(self, batch: List[RawRecord], file_range: FileRange) -> int:
        if not self._tally:
            return 0
        approx = sum(len(r.text) + 1 for r in batch) if file_range.end is not None else 0
        if file_range.end is not None:
            approx = min(approx, file_range.end - file_range.start)
        self._tally.add(len(batch), approx)
        return approx

    def finish_bundle(self):
        if self._tally:
            self._tally.flush()


class ReadRawRecords(beam.PTransform):
    """Input files -> batches (lists) of RawRecord, read by byte ranges in parallel.

    JSON Lines files are cut into ranges of `range_bytes`; a first pass counts each range's
    newlines so every range knows the line number it starts at, which keeps line numbers
    exact without reading files sequentially. Reading and preparing fuse, so records stream
    through with bounded memory.
    """

    def __init__(self, inputs: Sequence[Tuple[str, int, str]], max_record_bytes: int,
                 batch_size: int, range_bytes: int = DEFAULT_RANGE_BYTES,
                 progress_dir: Optional[str] = None):
        """`inputs`: (path, size, source name) of every file; `progress_dir`: where readers
        leave their progress tallies (local runs, see progress.py)."""
        super().__init__()
        self._sizes = {path: size for path, size, _ in inputs}
        self._progress_dir = progress_dir
        self._ranges = [r for path, size, source in inputs
                        for r in plan_ranges(path, size, range_bytes, source)]
        self._max_record_bytes = max_record_bytes
        self._batch_size = batch_size

    def expand(self, pbegin):
        ranges = (pbegin
                  | "PlanRanges" >> beam.Create(self._ranges)
                  | "SpreadRanges" >> beam.Reshuffle())
        counts = ranges | "CountNewlines" >> beam.ParDo(_CountNewlinesFn())
        return ranges | "ReadRanges" >> beam.ParDo(
            _ReadRangeFn(self._max_record_bytes, self._batch_size, self._sizes,
                         self._progress_dir),
            beam.pvalue.AsDict(counts))

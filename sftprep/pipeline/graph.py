"""The Beam graph of a run: every DoFn and composite transform, wired.

    input ranges -> ReadRawRecords -> PrepareExamples -+-> WriteShards -------+-> WriteRunMetadata
                                                       +-> rejected rows -----+-> WriteRejected
                                                       +-> stats partials ----+

This is the only module of a run that imports Beam. The work of each step is in Beam-free
modules (read.py, prepare.py, write.py, finish.py) that the inline run (inline.py) calls too;
here it is spread over workers: ranges read in parallel, examples handed to the writers as
piece files through a shuffle keyed by shard, rejected rows keyed by their file.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from sftprep.pipeline import files, gcs
from sftprep.pipeline.finish import Publishing, finalize
from sftprep.pipeline.plan import Plan, shard_spec
from sftprep.pipeline.local_workers import ForkedWorkers
from sftprep.pipeline.prepare import ShardPieces, keyed_rejection
from sftprep.pipeline.progress import ReadTally
from sftprep.pipeline.read import (
    DEFAULT_RANGE_BYTES, input_ranges, newlines_before, range_newlines, read_batches)
from sftprep.pipeline.write import (
    ShardSpec, WrittenShard, pieces_totals, write_pieces, write_rejected)
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.mix import SourcePlan, add_totals
from sftprep.transforms.prepare import (
    PrepareSettings, PreparedBatch, StartedBatch, finish_batch, prepare_batch, start_batch)
from sftprep.transforms.records import RawRecord
from sftprep.tokenizer.runtime import TokenizerRuntime

STATS_TAG, REJECTED_TAG = "stats", "rejected"


class StorageDoFn(beam.DoFn):
    """A DoFn that reads or writes files: sets up storage access in its worker process."""

    def setup(self):
        gcs.use_anonymous_access()


def windowed(output):
    """finish_bundle must emit windowed values; everything here is in the global window."""
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, windowed(output.value))
    return WindowedValue(output, MIN_TIMESTAMP, (GlobalWindow(),))


# Reading -----------------------------------------------------------------------------------


class _CountNewlinesFn(StorageDoFn):
    def process(self, file_range):
        if file_range.end is not None:
            yield (file_range.path, file_range.index), range_newlines(file_range)


class _ReadRangeFn(StorageDoFn):
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

    def process(self, file_range, newline_counts):
        yield from read_batches(file_range, newlines_before(file_range, newline_counts),
                                self._sizes[file_range.path], self._max_record_bytes,
                                self._batch_size, self._tally)

    def finish_bundle(self):
        if self._tally:
            self._tally.flush()


class ReadRawRecords(beam.PTransform):
    """Input files -> batches (lists) of RawRecord, read by byte ranges in parallel.

    Reading fuses with preparing (no shuffle between them), so records stream through with
    bounded memory, and a batch is handed over as the list of `RawRecord`s itself: no encoding
    on the way (an Arrow round trip cost about 9 us a record).
    """

    def __init__(self, inputs: Sequence[Tuple[str, int, str]], max_record_bytes: int,
                 batch_size: int, range_bytes: int = DEFAULT_RANGE_BYTES,
                 progress_dir: Optional[str] = None):
        """`inputs`: (path, size, source name) of every file; `progress_dir`: where readers
        leave their progress tallies (local runs, see progress.py)."""
        super().__init__()
        self._ranges = input_ranges(inputs, range_bytes)
        self._fn = _ReadRangeFn(max_record_bytes, batch_size,
                                {path: size for path, size, _ in inputs}, progress_dir)

    def expand(self, pbegin):
        ranges = (pbegin
                  | "PlanRanges" >> beam.Create(self._ranges)
                  | "SpreadRanges" >> beam.Reshuffle())
        counts = ranges | "CountNewlines" >> beam.ParDo(_CountNewlinesFn())
        return ranges | "ReadRanges" >> beam.ParDo(self._fn, beam.pvalue.AsDict(counts))


# Preparing ---------------------------------------------------------------------------------


class _RuntimeHandle:
    """A weak-referenceable holder, as `Shared` requires."""

    def __init__(self, runtime: TokenizerRuntime):
        self.runtime = runtime


def _runtime_tag(tokenizer_json_path: str, bos: str) -> str:
    return f"{tokenizer_json_path}|{bos}"


class _PrepareFn(StorageDoFn):
    """Thin: run the example path per batch, encode examples per shard, emit rejections and stats.

    Tokenization of a batch runs on a helper thread (the tokenizer releases the GIL) while this
    thread finishes the previous batch, so the Python work hides behind the tokenizer's. With
    `serial_tokenizer` the tokenizer's own thread pool is off (TOKENIZERS_PARALLELISM=false):
    where worker processes already fill the cores (one per core on Dataflow and Flink, several
    local ones), extra tokenizer threads only contend with them. With `processes` > 1 (local
    runs), whole batches go to that many forked children instead (`local_workers`).
    """

    def __init__(self, settings: PrepareSettings, tokenizer_json_path: str, rejected_shards: int,
                 shared: Shared, pieces_dir: str, serial_tokenizer: bool = True,
                 processes: int = 0):
        self._settings = settings
        self._serial_tokenizer = serial_tokenizer
        self._processes = processes
        self._workers: Optional[ForkedWorkers] = None
        self._tokenizer_json_path = tokenizer_json_path
        self._rejected_shards = rejected_shards
        self._shared = shared
        self._pieces_dir = pieces_dir
        self._runtime: Optional[TokenizerRuntime] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._in_flight: Optional[StartedBatch] = None
        self._pieces: Optional[ShardPieces] = None  # made per bundle

    def setup(self):
        super().setup()
        path, bos = self._tokenizer_json_path, self._settings.template.bos
        handle = self._shared.acquire(
            lambda: _RuntimeHandle(TokenizerRuntime.from_json(files.read_text(path), bos)),
            tag=_runtime_tag(path, bos))
        self._runtime = handle.runtime
        # Everything loaded so far (Beam, the tokenizer) lives as long as the worker: leave it out
        # of the cyclic collector's full passes, which would otherwise walk it every batch or two.
        gc.freeze()
        if self._processes > 1:
            self._runtime.fast_bpe()  # built once, before the fork: the children inherit it
            self._workers = ForkedWorkers(f"prepare-{id(self)}", self._prepare, self._processes)
            return
        if self._serial_tokenizer:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sftprep-tokenize")

    def _prepare(self, raw_batch: List[RawRecord]) -> PreparedBatch:
        return prepare_batch(raw_batch, self._settings, self._runtime)

    def start_bundle(self):
        self._in_flight = None
        self._pieces = ShardPieces(self._pieces_dir)

    def process(self, raw_batch: List[RawRecord]):
        if self._workers is not None:
            for prepared in self._workers.submit(raw_batch):
                yield from self._outputs(prepared)
            return
        started = start_batch(raw_batch, self._settings, self._runtime,
                              self._executor)
        previous, self._in_flight = self._in_flight, started
        if previous is not None:
            yield from self._outputs(finish_batch(previous, self._settings, self._runtime))

    def finish_bundle(self):
        started, self._in_flight = self._in_flight, None
        if self._workers is not None:
            done = self._workers.finish()
        else:
            done = [] if started is None else [finish_batch(started, self._settings, self._runtime)]
        for prepared in done:
            yield from map(windowed, self._outputs(prepared))
        yield from map(windowed, self._pieces.flush())

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def _outputs(self, prepared):
        yield from self._pieces.add(prepared.rows)
        for rejection in prepared.rejected + prepared.dropped:
            yield beam.pvalue.TaggedOutput(REJECTED_TAG,
                                           keyed_rejection(rejection, self._rejected_shards))
        yield beam.pvalue.TaggedOutput(STATS_TAG, prepared.stats)


class PrepareExamples(beam.PTransform):
    """Batches of raw records -> ((split, shard), piece path), plus tagged rejected rows and stats.

    Examples are written to piece files under `pieces_dir` (Arrow IPC, a few MB each, one shard
    per piece) and only their paths are shuffled, so the runner never holds the dataset in its
    shuffle; only paths from committed bundles reach the writers, so a retried bundle's orphan
    pieces are never read (they are deleted with the directory at the end of the run).

    `preloaded`, when the pipeline runs in this very process, is the runtime the launcher already
    built; it is handed to the workers through `Shared` instead of being loaded a second time.
    Keep the returned `keepalive` referenced until the pipeline has finished.
    """

    def __init__(self, settings: PrepareSettings, tokenizer_json_path: str, rejected_shards: int,
                 pieces_dir: str, preloaded: Optional[TokenizerRuntime] = None,
                 serial_tokenizer: bool = True, processes: int = 0):
        super().__init__()
        shared = Shared()
        self.keepalive = None if preloaded is None else shared.acquire(
            lambda: _RuntimeHandle(preloaded),
            tag=_runtime_tag(tokenizer_json_path, settings.template.bos))
        self._fn = _PrepareFn(settings, tokenizer_json_path, rejected_shards, shared, pieces_dir,
                              serial_tokenizer, processes)

    def expand(self, batches):
        return batches | "Prepare" >> beam.ParDo(self._fn).with_output_types(
            Tuple[Any, Any]).with_outputs(
            STATS_TAG, REJECTED_TAG, main="examples")


# Writing -----------------------------------------------------------------------------------


class _WriteShardFn(StorageDoFn):
    """One shard's pieces -> its Parquet file (write.write_shard), then the pieces are deleted.
    With `processes` > 1 (local runs), shards are written by that many forked children
    (`local_workers`), their outputs emitted in order.
    """

    def __init__(self, spec: ShardSpec, processes: int = 0):
        self._spec = spec
        self._plan: Optional[Tuple[int, Dict[str, SourcePlan]]] = None
        self._processes = processes
        self._workers: Optional[ForkedWorkers] = None

    def setup(self):
        super().setup()
        if self._processes > 1:
            self._workers = ForkedWorkers(f"write-{id(self)}", self._write, self._processes)

    def teardown(self):
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def process(self, element, totals=None):
        task = (element, totals)
        for written in self._workers.submit(task) if self._workers else [self._write(task)]:
            yield from _shard_outputs(written)

    def finish_bundle(self):
        for written in self._workers.finish() if self._workers is not None else ():
            yield from map(windowed, _shard_outputs(written))

    def _write(self, element_and_totals) -> WrittenShard:
        ((split, shard), paths), totals = element_and_totals
        plan = self._plan_for(totals or {}) if self._spec.mixing is not None else None
        return write_pieces(self._spec, split, shard, [p for p in paths if p is not None], plan)

    def _plan_for(self, totals: Dict[str, np.ndarray]) -> Dict[str, SourcePlan]:
        """The mixture's plan, computed once per worker from the summed totals."""
        if self._plan is None or self._plan[0] != id(totals):
            self._plan = (id(totals), self._spec.mixing.plan(totals))
        return self._plan[1]


def _shard_outputs(written: WrittenShard):
    for row in written.duplicates:
        yield beam.pvalue.TaggedOutput(REJECTED_TAG, row)
    yield beam.pvalue.TaggedOutput(STATS_TAG, written.stats)
    yield written.file


class WriteShards(beam.PTransform):
    """((split, shard), piece path) -> one Parquet file per shard, every shard index present.

    With a mixture (`spec.mixing`), copies per example are planned from per-source totals of
    the examples that survive deduplication: the one extra pass, every shard's pieces read
    once to count them, then again to write."""

    def __init__(self, spec: ShardSpec, processes: int = 0):
        super().__init__()
        self._spec = spec
        self._processes = processes

    def expand(self, keyed_blobs):
        grouped = _group_by_shard(keyed_blobs, self._spec.keys())
        side = []
        if self._spec.mixing is not None:
            summed = (grouped
                      | "CountKept" >> beam.ParDo(_KeptTotalsFn(self._spec))
                      | "SumTotals" >> beam.CombineGlobally(_SumTotals()))
            side = [beam.pvalue.AsSingleton(summed)]
        return (grouped
                | "WriteParquet" >> beam.ParDo(
                    _WriteShardFn(self._spec, self._processes),
                    *side).with_output_types(Dict[str, Any]).with_outputs(
                        STATS_TAG, REJECTED_TAG, main="files"))


class _KeptTotalsFn(StorageDoFn):
    """A shard's units by source and draw bucket, over the rows deduplication keeps."""

    def __init__(self, spec: ShardSpec):
        self._spec = spec

    def process(self, element):
        _, paths = element
        totals = pieces_totals(self._spec, [p for p in paths if p is not None])
        if totals is not None:
            yield totals


class _SumTotals(beam.CombineFn):
    """Per-batch sparse totals -> per-source dense histograms (mix.add_totals)."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, part):
        return add_totals(accumulator, part)

    def merge_accumulators(self, accumulators):
        merged: Dict[str, np.ndarray] = {}
        for accumulator in accumulators:
            for name, dense in accumulator.items():
                merged[name] = merged.get(name, 0) + dense  # a new array: inputs stay as they are
        return merged

    def extract_output(self, accumulator):
        return accumulator


class _WriteRejectedFn(StorageDoFn):
    def __init__(self, output: str, shards: int):
        self._output = output
        self._shards = shards

    def process(self, element):
        shard, rows = element
        yield write_rejected(self._output, shard, self._shards, (r for r in rows if r is not None))


class WriteRejected(beam.PTransform):
    """(shard, row) -> rejected/part-NNNNN-of-MMMMM.jsonl sorted by source and line."""

    def __init__(self, output: str, shards: int):
        super().__init__()
        self._output = output
        self._shards = shards

    def expand(self, keyed_rows):
        return (_group_by_shard(keyed_rows, range(self._shards))
                | "WriteJsonl" >> beam.ParDo(_WriteRejectedFn(self._output, self._shards)))


def _group_by_shard(keyed, keys: Iterable[Any]):
    """(key, value) -> (key, values), every one of `keys` present: each key's values hold a
    None, which the writers skip. The labels nest under the transform calling it."""
    every_shard = keyed.pipeline | "EveryShard" >> beam.Create([(key, None) for key in keys])
    return ((keyed, every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey())


# Finishing ---------------------------------------------------------------------------------


class _FinalizeFn(StorageDoFn):
    def __init__(self, *args):  # finalize's arguments before those the pipeline computes
        self._args = args

    def process(self, _, raw_stats, data_files, rejected_files):
        yield finalize(*self._args, raw_stats, data_files, rejected_files)


class WriteRunMetadata(beam.PTransform):
    """After every file is written, `finish.finalize`: stats.json and the report, then
    manifest.json and LATEST, which a run that fails its final checks never gets."""

    def __init__(self, output: str, manifest_base: Dict[str, Any], max_rejected_fraction: float,
                 publishing: Optional[Publishing] = None):
        super().__init__()
        self._fn = _FinalizeFn(output, manifest_base, max_rejected_fraction, publishing)

    def expand(self, inputs):
        stats, data_files, rejected_files = inputs
        merged = stats | "MergeStats" >> beam.CombineGlobally(stats_lib.merge)
        return (stats.pipeline
                | "Once" >> beam.Create([None])
                | "WriteStatsAndManifest" >> beam.ParDo(
                    self._fn, beam.pvalue.AsSingleton(merged), beam.pvalue.AsList(data_files),
                    beam.pvalue.AsList(rejected_files)))


# The run ------------------------------------------------------------------------------------


def build_graph(pipeline: beam.Pipeline, plan: Plan):
    """Wire the whole run; returns what must stay referenced until the pipeline finishes."""
    settings, output = plan.settings, plan.output
    rejected_shards = settings.num_shards
    batches = pipeline | "ReadRawRecords" >> ReadRawRecords(
        plan.inputs, plan.max_record_bytes, plan.batch_size, plan.range_bytes, plan.progress_dir)
    prepare = PrepareExamples(settings, plan.tokenizer_json_path, rejected_shards,
                              files.join(output, files.PIECES), plan.preloaded,
                              plan.serial_tokenizer, plan.local_processes)
    prepared = batches | "PrepareExamples" >> prepare
    written = prepared.examples | "WriteShards" >> WriteShards(
        shard_spec(plan), plan.local_processes)
    rejected_files = ((prepared[REJECTED_TAG], written[REJECTED_TAG])
                      | "AllRejected" >> beam.Flatten()
                      | "WriteRejected" >> WriteRejected(output, rejected_shards))
    stats = (prepared[STATS_TAG], written[STATS_TAG]) | "AllStats" >> beam.Flatten()
    _ = ((stats, written.files, rejected_files)
         | "WriteRunMetadata" >> WriteRunMetadata(output, plan.manifest_base,
                                                  plan.max_rejected_fraction, plan.publishing))
    return prepare.keepalive

"""The Beam graph: composite transforms that wire the pure stages of `sftprep.transforms`.

    files -> ReadRawRecords -> PrepareExamples -+-> WriteShards ------+-> WriteRunMetadata
                                                +-> rejected rows ----+-> WriteRejected
                                                +-> stats partials ---+

Examples travel to the writers as one Arrow IPC blob per (batch, shard), so the shuffle moves a
handful of compact elements rather than one Python object per example.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from sftprep.pipeline import files
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.prepare import Example, PrepareSettings, StartedBatch, finish_batch, start_batch
from sftprep.transforms.read import FileRange, count_newlines, iter_range_records, plan_ranges
from sftprep.transforms.records import DUPLICATE_REASON, RawRecord, Rejection
from sftprep.transforms.shard import shard_name
from sftprep.transforms.tokenize import TokenizerRuntime

STATS_TAG, REJECTED_TAG = "stats", "rejected"
ROW_GROUP_SIZE = 4096

# The Parquet schema of train/ and validation/ (SPEC: "Parquet columns").
OUTPUT_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
    ("num_trainable_tokens", pa.int32()),
    ("example_id", pa.string()),
    ("source", pa.string()),
    ("source_line", pa.int64()),
    ("truncated", pa.bool_()),
])
# What travels through the shuffle: the output columns that cannot be derived, plus the reasons.
_SHUFFLE_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("source", pa.string()),
    ("source_line", pa.int64()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("num_trainable_tokens", pa.int32()),
    ("truncation", pa.string()),
])


# --------------------------------------------------------------------------------- reading


DEFAULT_RANGE_BYTES = 16 * 1024 * 1024
_RAW_SCHEMA = pa.schema([("source", pa.string()), ("line", pa.int64()), ("text", pa.string()),
                         ("error", pa.string()), ("detail", pa.string())])


def encode_raw_batch(records: Sequence[RawRecord]) -> bytes:
    """Raw records -> Arrow IPC bytes: a batch crosses process boundaries without pickling."""
    table = pa.table({
        "source": [r.source for r in records],
        "line": pa.array([r.line for r in records], pa.int64()),
        "text": [r.text for r in records],
        "error": [r.error for r in records],
        "detail": [r.detail for r in records],
    }, schema=_RAW_SCHEMA)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, _RAW_SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_raw_batch(blob: bytes) -> List[RawRecord]:
    columns = pa.ipc.open_stream(blob).read_all().to_pydict()
    return [RawRecord(*row) for row in zip(columns["source"], columns["line"], columns["text"],
                                           columns["error"], columns["detail"])]


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _CountNewlinesFn(beam.DoFn):
    def process(self, file_range: FileRange):
        if file_range.end is not None:
            with _open(file_range.path) as stream:
                yield (file_range.path, file_range.index), count_newlines(stream, file_range)


class _ReadRangeFn(beam.DoFn):
    def __init__(self, max_record_bytes: int, batch_size: int):
        self._max_record_bytes = max_record_bytes
        self._batch_size = batch_size

    def process(self, file_range: FileRange, newline_counts):
        before = sum(newline_counts.get((file_range.path, index), 0)
                     for index in range(file_range.index))
        batch: List[RawRecord] = []
        with _open(file_range.path) as stream:
            for record in iter_range_records(file_range, stream, before, self._max_record_bytes):
                batch.append(record)
                if len(batch) >= self._batch_size:
                    yield encode_raw_batch(batch)
                    batch = []
        if batch:
            yield encode_raw_batch(batch)


class ReadRawRecords(beam.PTransform):
    """Input files -> batches of RawRecord (Arrow IPC bytes), read by byte ranges in parallel.

    JSON Lines files are cut into ranges of `range_bytes`; a first pass counts each range's
    newlines so every range knows the line number it starts at, which keeps line numbers
    exact without reading files sequentially. Reading and preparing fuse, so records stream
    through with bounded memory.
    """

    def __init__(self, files_and_sizes: Sequence[Tuple[str, int]], max_record_bytes: int,
                 batch_size: int, range_bytes: int = DEFAULT_RANGE_BYTES):
        super().__init__()
        self._ranges = [r for path, size in files_and_sizes
                        for r in plan_ranges(path, size, range_bytes)]
        self._max_record_bytes = max_record_bytes
        self._batch_size = batch_size

    def expand(self, pbegin):
        ranges = (pbegin
                  | "PlanRanges" >> beam.Create(self._ranges)
                  | "SpreadRanges" >> beam.Reshuffle())
        counts = ranges | "CountNewlines" >> beam.ParDo(_CountNewlinesFn())
        return ranges | "ReadRanges" >> beam.ParDo(
            _ReadRangeFn(self._max_record_bytes, self._batch_size),
            beam.pvalue.AsDict(counts))


# --------------------------------------------------------------------------------- preparing


def _load_runtime(tokenizer_json_path: str, bos: str) -> TokenizerRuntime:
    return TokenizerRuntime.from_json(files.read_text(tokenizer_json_path), bos)


class _RuntimeHandle:
    """A weak-referenceable holder, as `Shared` requires."""

    def __init__(self, runtime: TokenizerRuntime):
        self.runtime = runtime


def _runtime_tag(tokenizer_json_path: str, bos: str) -> str:
    return f"{tokenizer_json_path}|{bos}"


class _PrepareFn(beam.DoFn):
    """Thin: run the example path per batch, encode examples per shard, emit rejections and stats.

    Tokenization of a batch runs on a helper thread (the tokenizer releases the GIL) while this
    thread finishes the previous batch, so the Python work hides behind the tokenizer's.
    """

    def __init__(self, settings: PrepareSettings, tokenizer_json_path: str, rejected_shards: int,
                 shared: Shared):
        self._settings = settings
        self._tokenizer_json_path = tokenizer_json_path
        self._rejected_shards = rejected_shards
        self._shared = shared
        self._runtime: Optional[TokenizerRuntime] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._in_flight: Optional[StartedBatch] = None

    def setup(self):
        path, bos = self._tokenizer_json_path, self._settings.template.bos
        handle = self._shared.acquire(lambda: _RuntimeHandle(_load_runtime(path, bos)),
                                      tag=_runtime_tag(path, bos))
        self._runtime = handle.runtime
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sftprep-tokenize")

    def start_bundle(self):
        self._in_flight = None

    def process(self, raw_batch: bytes):
        started = start_batch(decode_raw_batch(raw_batch), self._settings, self._runtime,
                              self._executor)
        previous, self._in_flight = self._in_flight, started
        if previous is not None:
            yield from self._outputs(finish_batch(previous, self._settings, self._runtime))

    def finish_bundle(self):
        if self._in_flight is not None:
            started, self._in_flight = self._in_flight, None
            prepared = finish_batch(started, self._settings, self._runtime)
            for output in self._outputs(prepared):
                yield _windowed(output)

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _outputs(self, prepared):
        by_shard: Dict[Tuple[str, int], List[Example]] = {}
        for example in prepared.examples:
            by_shard.setdefault((example.split, example.shard), []).append(example)
        for key in sorted(by_shard):
            yield key, encode_examples(by_shard[key])
        for rejection in prepared.rejected + prepared.dropped:
            yield beam.pvalue.TaggedOutput(REJECTED_TAG,
                                           keyed_rejection(rejection, self._rejected_shards))
        yield beam.pvalue.TaggedOutput(STATS_TAG, prepared.stats)


def _windowed(output):
    """finish_bundle must emit windowed values; everything here is in the global window."""
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, _windowed(output.value))
    return WindowedValue(output, MIN_TIMESTAMP, (GlobalWindow(),))


def keyed_rejection(rejection: Rejection, shards: int) -> Tuple[int, Tuple[str, int, str, str]]:
    """(rejected shard, (source, line, reason, JSON line)): the sort key travels with the line."""
    shard = zlib.crc32(f"{rejection.source}:{rejection.line}".encode()) % shards
    line = json.dumps(rejection.as_row(), ensure_ascii=False)
    return shard, (rejection.source, rejection.line, rejection.reason, line)


def encode_examples(examples: Sequence[Example]) -> bytes:
    """Examples -> one Arrow IPC stream (the compact shuffle value)."""
    table = pa.table({
        "example_id": [e.example_id for e in examples],
        "source": [e.source for e in examples],
        "source_line": pa.array([e.source_line for e in examples], pa.int64()),
        "input_ids": _list_array([e.input_ids for e in examples]),
        "labels": _list_array([e.labels for e in examples]),
        "num_trainable_tokens": pa.array([e.num_trainable_tokens for e in examples], pa.int32()),
        "truncation": [",".join(e.truncation) for e in examples],
    }, schema=_SHUFFLE_SCHEMA)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, _SHUFFLE_SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _list_array(arrays: Sequence[np.ndarray]) -> pa.Array:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int32, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def decode_examples(blobs: Iterable[bytes]) -> pa.Table:
    tables = [pa.ipc.open_stream(blob).read_all() for blob in blobs]
    return pa.concat_tables(tables) if tables else _SHUFFLE_SCHEMA.empty_table()


class PrepareExamples(beam.PTransform):
    """Batches of raw records -> ((split, shard), IPC blob), plus tagged rejected rows and stats.

    `preloaded`, when the pipeline runs in this very process, is the runtime the launcher already
    built; it is handed to the workers through `Shared` instead of being loaded a second time.
    Keep the returned `keepalive` referenced until the pipeline has finished.
    """

    def __init__(self, settings: PrepareSettings, tokenizer_json_path: str, rejected_shards: int,
                 preloaded: Optional[TokenizerRuntime] = None):
        super().__init__()
        shared = Shared()
        self.keepalive = None
        if preloaded is not None:
            self.keepalive = shared.acquire(
                lambda: _RuntimeHandle(preloaded),
                tag=_runtime_tag(tokenizer_json_path, settings.template.bos))
        self._fn = _PrepareFn(settings, tokenizer_json_path, rejected_shards, shared)

    def expand(self, batches):
        return batches | "Prepare" >> beam.ParDo(self._fn).with_output_types(
            Tuple[Any, Any]).with_outputs(
            STATS_TAG, REJECTED_TAG, main="examples")


# --------------------------------------------------------------------------------- writing


class _WriteShardFn(beam.DoFn):
    """Sort a shard's rows by example id, keep the first of identical ids, write Parquet."""

    def __init__(self, output: str, shard_counts: Dict[str, int], rejected_shards: int):
        self._output = output
        self._shard_counts = shard_counts
        self._rejected_shards = rejected_shards

    def process(self, element):
        (split, shard), blobs = element
        table = decode_examples(b for b in blobs if b is not None)
        table = table.sort_by([("example_id", "ascending"), ("source", "ascending"),
                               ("source_line", "ascending")])
        ids = np.asarray(table.column("example_id").to_numpy(zero_copy_only=False))
        first = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            first[1:] = ids[1:] != ids[:-1]
        stats: stats_lib.Stats = {}
        for index in np.flatnonzero(~first):
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, self._duplicate_row(table, index, first))
            stats_lib.bump(stats, "duplicates", table.column("source")[index].as_py())
        table = table.filter(pa.array(first))
        name = shard_name(shard, self._shard_counts[split], ".parquet")
        path = files.join(self._output, split, name)
        data = encode_parquet(table)
        files.write_bytes(path, data)
        _shard_stats(stats, split, table)
        yield beam.pvalue.TaggedOutput(STATS_TAG, stats)
        yield {"path": f"{split}/{name}", "split": split, "rows": table.num_rows,
               "bytes": len(data), "sha256": _sha256(data)}

    def _duplicate_row(self, table: pa.Table, index: int, first: np.ndarray):
        kept = int(np.flatnonzero(first[: index + 1])[-1])
        source, line = table.column("source")[index].as_py(), table.column("source_line")[index].as_py()
        detail = (f"same example_id {table.column('example_id')[index].as_py()} as "
                  f"{table.column('source')[kept].as_py()}:{table.column('source_line')[kept].as_py()}")
        return keyed_rejection(Rejection(source, line, DUPLICATE_REASON, detail, None),
                               self._rejected_shards)


def encode_parquet(table: pa.Table) -> bytes:
    """The output rows, in the output schema, as deterministic zstd Parquet bytes."""
    input_ids = table.column("input_ids")
    num_tokens = pc.list_value_length(input_ids).cast(pa.int32())
    truncated = pc.not_equal(table.column("truncation"), "")
    out = pa.table([input_ids, table.column("labels"), num_tokens,
                    table.column("num_trainable_tokens"), table.column("example_id"),
                    table.column("source"), table.column("source_line"), truncated],
                   schema=OUTPUT_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(out, sink, compression="zstd", compression_level=3,
                   row_group_size=ROW_GROUP_SIZE, write_statistics=True)
    return sink.getvalue()


def _shard_stats(stats: stats_lib.Stats, split: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy()
    trainable = table.column("num_trainable_tokens").to_numpy()
    for source, count in zip(*np.unique(np.asarray(table.column("source").to_pylist()),
                                        return_counts=True)):
        stats_lib.bump(stats, "written", split, str(source), by=int(count))
    stats_lib.bump(stats, "tokens", split, "total", by=int(lengths.sum()))
    stats_lib.bump(stats, "tokens", split, "trainable", by=int(trainable.sum()))
    for value, count in zip(*np.unique(lengths, return_counts=True)):
        stats_lib.bump(stats, "lengths", split, str(int(value)), by=int(count))
    for value, count in zip(*np.unique(trainable, return_counts=True)):
        stats_lib.bump(stats, "trainable_lengths", split, str(int(value)), by=int(count))
    for reasons in table.column("truncation").to_pylist():
        if reasons:
            stats_lib.bump(stats, "rows_truncated")
            for reason in reasons.split(","):
                stats_lib.bump(stats, "truncated", reason)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WriteShards(beam.PTransform):
    """((split, shard), blob) -> one Parquet file per shard, every shard index present."""

    def __init__(self, output: str, shard_counts: Dict[str, int], rejected_shards: int):
        super().__init__()
        self._output = output
        self._shard_counts = shard_counts
        self._rejected_shards = rejected_shards

    def expand(self, keyed_blobs):
        every_shard = [((split, index), None) for split, count in sorted(self._shard_counts.items())
                       for index in range(count)]
        return ((keyed_blobs, keyed_blobs.pipeline | "EveryShard" >> beam.Create(every_shard))
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteParquet" >> beam.ParDo(
                    _WriteShardFn(self._output, self._shard_counts,
                                  self._rejected_shards)).with_output_types(
                                      Dict[str, Any]).with_outputs(
                        STATS_TAG, REJECTED_TAG, main="files"))


class _WriteRejectedFn(beam.DoFn):
    def __init__(self, output: str, shards: int):
        self._output = output
        self._shards = shards

    def process(self, element):
        shard, rows = element
        lines = [row[3] for row in sorted((r for r in rows if r is not None), key=lambda r: r[:3])]
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        name = shard_name(shard, self._shards, ".jsonl")
        files.write_bytes(files.join(self._output, "rejected", name), data)
        yield {"path": f"rejected/{name}", "split": "rejected", "rows": len(lines),
               "bytes": len(data), "sha256": _sha256(data)}


class WriteRejected(beam.PTransform):
    """(shard, row) -> rejected/part-NNNNN-of-MMMMM.jsonl sorted by source and line."""

    def __init__(self, output: str, shards: int):
        super().__init__()
        self._output = output
        self._shards = shards

    def expand(self, keyed_rows):
        every_shard = [(index, None) for index in range(self._shards)]
        return ((keyed_rows, keyed_rows.pipeline | "EveryShard" >> beam.Create(every_shard))
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteJsonl" >> beam.ParDo(_WriteRejectedFn(self._output, self._shards)))


# --------------------------------------------------------------------------------- finishing


class RunFailed(RuntimeError):
    """The run finished but must not be presented as complete (accounting, too many rejections)."""


class _FinalizeFn(beam.DoFn):
    def __init__(self, output: str, manifest_base: Dict[str, Any], max_rejected_fraction: float):
        self._output = output
        self._manifest_base = manifest_base
        self._max_rejected_fraction = max_rejected_fraction

    def process(self, _, raw_stats, data_files, rejected_files):
        summary = stats_lib.summarize(raw_stats or {})
        check_run(summary, self._max_rejected_fraction)
        stats_bytes = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")
        files.write_bytes(files.join(self._output, "stats.json"), stats_bytes)
        manifest = dict(self._manifest_base)
        manifest["outputs"] = sorted(data_files + rejected_files, key=lambda f: f["path"])
        manifest["stats_sha256"] = _sha256(stats_bytes)
        manifest["summary"] = {k: summary[k] for k in ("records_read", "rows_written",
                                                        "rows_by_split", "rejected", "dropped",
                                                        "duplicates")}
        manifest.setdefault("timings", {})["finished_at"] = time.time()
        files.write_bytes(files.join(self._output, files.MANIFEST),
                          (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        yield manifest


def check_run(summary: Dict[str, Any], max_rejected_fraction: float) -> None:
    if not summary["accounting"]["holds"]:
        raise RunFailed(f"accounting invariant violated: read {summary['records_read']} != "
                        f"written {summary['rows_written']} + rejected {summary['rejected']} + "
                        f"dropped {summary['dropped']} + duplicates {summary['duplicates']}")
    read = summary["records_read"]
    unused = summary["rejected"] + summary["dropped"]
    if read and unused / read > max_rejected_fraction:
        reasons = {**summary["rejected_by_reason"], **summary["dropped_by_reason"]}
        top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        raise RunFailed(f"{unused} of {read} records rejected or dropped ({unused / read:.1%} > "
                        f"--max-rejected-fraction {max_rejected_fraction}); top reasons: {top}. "
                        "See rejected/ and stats of this run; raise the limit if this is expected")


class WriteRunMetadata(beam.PTransform):
    """After every file is written: stats.json, then manifest.json (the completion marker)."""

    def __init__(self, output: str, manifest_base: Dict[str, Any], max_rejected_fraction: float):
        super().__init__()
        self._fn = _FinalizeFn(output, manifest_base, max_rejected_fraction)

    def expand(self, inputs):
        stats, data_files, rejected_files = inputs
        merged = stats | "MergeStats" >> beam.CombineGlobally(stats_lib.merge)
        return (stats.pipeline
                | "Once" >> beam.Create([None])
                | "WriteStatsAndManifest" >> beam.ParDo(
                    self._fn, beam.pvalue.AsSingleton(merged), beam.pvalue.AsList(data_files),
                    beam.pvalue.AsList(rejected_files)))


def build_graph(pipeline: beam.Pipeline, *, inputs: Sequence[Tuple[str, int]], output: str,
                settings: PrepareSettings, tokenizer_json_path: str, max_record_bytes: int,
                batch_size: int, manifest_base: Dict[str, Any], max_rejected_fraction: float,
                preloaded: Optional[TokenizerRuntime] = None):
    """Wire the whole run; returns what must stay referenced until the pipeline finishes."""
    shard_counts = {"train": settings.num_shards}
    if settings.validation_fraction > 0:
        shard_counts["validation"] = settings.validation_shards
    rejected_shards = settings.num_shards
    batches = pipeline | "ReadRawRecords" >> ReadRawRecords(inputs, max_record_bytes, batch_size)
    prepare = PrepareExamples(settings, tokenizer_json_path, rejected_shards, preloaded)
    prepared = batches | "PrepareExamples" >> prepare
    written = prepared.examples | "WriteShards" >> WriteShards(output, shard_counts, rejected_shards)
    rejected_files = ((prepared[REJECTED_TAG], written[REJECTED_TAG])
                      | "AllRejected" >> beam.Flatten()
                      | "WriteRejected" >> WriteRejected(output, rejected_shards))
    stats = (prepared[STATS_TAG], written[STATS_TAG]) | "AllStats" >> beam.Flatten()
    _ = ((stats, written.files, rejected_files)
         | "WriteRunMetadata" >> WriteRunMetadata(output, manifest_base, max_rejected_fraction))
    return prepare.keepalive

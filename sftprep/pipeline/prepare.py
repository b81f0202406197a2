"""Preparing examples on the workers: the example path per batch, examples keyed by shard.

Examples travel to the writers as one Arrow IPC blob per (batch, shard), so the shuffle moves a
handful of compact elements rather than one Python object per example.
"""

from __future__ import annotations

import gc
import io
import json
import os
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from sftprep.pipeline import files, gcs
from sftprep.pipeline.local_workers import ForkedWorkers
from sftprep.transforms.prepare import (
    PrepareSettings, PreparedBatch, StartedBatch, finish_batch, prepare_batch, start_batch)
from sftprep.transforms.records import RawRecord, Rejection
from sftprep.transforms.rows import ExampleRows
from sftprep.tokenizer.runtime import TokenizerRuntime

STATS_TAG, REJECTED_TAG = "stats", "rejected"
PIECE_TOKENS = 1 << 21  # tokens per piece file: about 16 MB of ids and labels
# Tokens a worker's shard buffers may hold together (about 128 MB of ids and labels): past it,
# the fullest buffer is written as a smaller piece. Without this bound, one buffer per shard
# (a shard per 64 MiB of input) let memory grow with the input: up to 90 x 16 MB at 10M records.
BUFFERED_TOKENS = 1 << 24

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


def _load_runtime(tokenizer_json_path: str, bos: str) -> TokenizerRuntime:
    return TokenizerRuntime.from_json(files.read_text(tokenizer_json_path), bos)


class _RuntimeHandle:
    """A weak-referenceable holder, as `Shared` requires."""

    def __init__(self, runtime: TokenizerRuntime):
        self.runtime = runtime


def _runtime_tag(tokenizer_json_path: str, bos: str) -> str:
    return f"{tokenizer_json_path}|{bos}"


class _PrepareFn(gcs.StorageDoFn):
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
        self._buffers: Dict[Tuple[str, int], List[ExampleRows]] = {}
        self._buffered_tokens: Dict[Tuple[str, int], int] = {}

    def setup(self):
        super().setup()
        path, bos = self._tokenizer_json_path, self._settings.template.bos
        handle = self._shared.acquire(lambda: _RuntimeHandle(_load_runtime(path, bos)),
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
        self._buffers, self._buffered_tokens = {}, {}

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
        if self._workers is not None:
            for prepared in self._workers.finish():
                for output in self._outputs(prepared):
                    yield windowed(output)
        if self._in_flight is not None:
            started, self._in_flight = self._in_flight, None
            prepared = finish_batch(started, self._settings, self._runtime)
            for output in self._outputs(prepared):
                yield windowed(output)
        for key in sorted(self._buffers):
            yield windowed(self._flush(key))
        self._buffers, self._buffered_tokens = {}, {}

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def _outputs(self, prepared):
        for key, rows in prepared.rows.by_shard():
            self._buffers.setdefault(key, []).append(rows)
            self._buffered_tokens[key] = self._buffered_tokens.get(key, 0) + rows.num_tokens
            if self._buffered_tokens[key] >= PIECE_TOKENS:
                yield self._flush(key)
        while sum(self._buffered_tokens.values()) > BUFFERED_TOKENS:
            yield self._flush(max(self._buffered_tokens, key=self._buffered_tokens.__getitem__))
        for rejection in prepared.rejected + prepared.dropped:
            yield beam.pvalue.TaggedOutput(REJECTED_TAG,
                                           keyed_rejection(rejection, self._rejected_shards))
        yield beam.pvalue.TaggedOutput(STATS_TAG, prepared.stats)

    def _flush(self, key: Tuple[str, int]) -> Tuple[Tuple[str, int], str]:
        """Write one shard's buffered examples as a piece file; its path is what is shuffled."""
        rows = ExampleRows.concat(self._buffers.pop(key))
        self._buffered_tokens.pop(key)
        path = files.join(self._pieces_dir, f"{key[0]}-{key[1]:05d}", f"{uuid.uuid4().hex}.arrow")
        files.write_bytes(path, encode_rows(rows))
        return key, path


def windowed(output):
    """finish_bundle must emit windowed values; everything here is in the global window."""
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, windowed(output.value))
    return WindowedValue(output, MIN_TIMESTAMP, (GlobalWindow(),))


def keyed_rejection(rejection: Rejection, shards: int) -> Tuple[int, Tuple[str, int, str, str]]:
    """(rejected shard, (source, line, reason, JSON line)): the sort key travels with the line."""
    shard = zlib.crc32(f"{rejection.source}:{rejection.line}".encode()) % shards
    line = json.dumps(rejection.as_row(), ensure_ascii=False)
    return shard, (rejection.source, rejection.line, rejection.reason, line)


def encode_rows(rows: ExampleRows) -> bytes:
    """Prepared rows -> one Arrow IPC stream (the compact shuffle value)."""
    table = pa.table({
        "example_id": pa.array(rows.example_id, pa.string()),
        "source": pa.array(rows.source, pa.string()),
        "source_line": pa.array(rows.source_line, pa.int64()),
        "input_ids": _list_array(rows.offsets, rows.input_ids),
        "labels": _list_array(rows.offsets, rows.labels),
        "num_trainable_tokens": pa.array(rows.num_trainable_tokens, pa.int32()),
        "truncation": pa.array([",".join(reasons) for reasons in rows.truncation], pa.string()),
    }, schema=_SHUFFLE_SCHEMA)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, _SHUFFLE_SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values.astype(np.int32, copy=False)))


def decode_examples(blobs: Iterable[bytes]) -> pa.Table:
    tables = [pa.ipc.open_stream(blob).read_all() for blob in blobs]
    return pa.concat_tables(tables) if tables else _SHUFFLE_SCHEMA.empty_table()


def read_pieces(paths: Iterable[str]) -> pa.Table:
    return decode_examples(files.read_bytes(path) for path in paths)


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
        self.keepalive = None
        if preloaded is not None:
            self.keepalive = shared.acquire(
                lambda: _RuntimeHandle(preloaded),
                tag=_runtime_tag(tokenizer_json_path, settings.template.bos))
        self._fn = _PrepareFn(settings, tokenizer_json_path, rejected_shards, shared, pieces_dir,
                              serial_tokenizer, processes)

    def expand(self, batches):
        return batches | "Prepare" >> beam.ParDo(self._fn).with_output_types(
            Tuple[Any, Any]).with_outputs(
            STATS_TAG, REJECTED_TAG, main="examples")

"""Writing: one deterministic Parquet file per shard, and the rejected records as JSON Lines."""

from __future__ import annotations

import io
from typing import Any, Dict

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from sftprep.dataset import DEFAULT_PACKER, PACKED_SCHEMA
from sftprep.pipeline import files, gcs
from sftprep.pipeline.prepare import REJECTED_TAG, STATS_TAG, keyed_rejection, read_pieces
from sftprep.transforms import pack as pack_lib
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.records import DUPLICATE_REASON, Rejection
from sftprep.transforms.shard import shard_name

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


class _WriteShardFn(gcs.StorageDoFn):
    """Sort a shard's rows by example id, keep the first of identical ids, write Parquet
    (packed by `encode_packed` with a pack length)."""

    def __init__(self, output: str, shard_counts: Dict[str, int], rejected_shards: int,
                 pack_length: int = 0):
        self._output = output
        self._shard_counts = shard_counts
        self._rejected_shards = rejected_shards
        self._pack_length = pack_length

    def process(self, element):
        (split, shard), paths = element
        pieces = sorted(p for p in paths if p is not None)
        table = read_pieces(pieces)
        order = pc.sort_indices(table, sort_keys=[("example_id", "ascending"),
                                                 ("source", "ascending"),
                                                 ("source_line", "ascending")])
        keys = table.select(["example_id", "source", "source_line"]).take(order)
        ids = np.asarray(keys.column("example_id").to_numpy(zero_copy_only=False))
        first = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            first[1:] = ids[1:] != ids[:-1]
        stats: stats_lib.Stats = {}
        for index in np.flatnonzero(~first):
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, self._duplicate_row(keys, index, first))
            stats_lib.bump(stats, "duplicates", keys.column("source")[index].as_py())
        table = table.take(order.filter(pa.array(first)))  # the one copy of the rows
        name = shard_name(shard, self._shard_counts[split], ".parquet")
        path = files.join(self._output, split, name)
        data, rows = (encode_packed(table, self._pack_length, stats, split) if self._pack_length
                      else (encode_parquet(table), table.num_rows))
        files.write_bytes(path, data)
        if pieces:
            FileSystems.delete(pieces)
        _shard_stats(stats, split, table)
        yield beam.pvalue.TaggedOutput(STATS_TAG, stats)
        yield {"path": f"{split}/{name}", "split": split, "rows": rows,
               "bytes": len(data), "sha256": files.sha256_hex(data)}

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
    return _parquet_bytes(out)


def pack_table(table: pa.Table, pack_length: int,
               packer: str = DEFAULT_PACKER) -> pa.Table:
    """A shard's examples (sorted by example id, one copy each) packed into rows of at most
    `pack_length` tokens, in PACKED_SCHEMA (see sftprep/transforms/pack.py for the order)."""
    input_ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    offsets = _list_offsets(input_ids)
    lengths = np.diff(offsets)
    rows = pack_lib.PACKERS[packer](lengths, pack_length)
    packed = pack_lib.pack_columns(_values(input_ids), _values(labels), offsets, rows)
    order = pa.array(packed.order)
    per_example = pa.array(packed.example_offsets.astype(np.int32))
    per_token = pa.array(packed.offsets.astype(np.int32))

    def examples_list(column: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(per_example, column.take(order))

    def tokens_list(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(per_token, pa.array(values, pa.int32()))

    trained = packed.labels != pack_lib.IGNORE_INDEX
    starts = packed.offsets
    trainable = np.add.reduceat(trained.astype(np.int32), starts[:-1]) if len(rows) else \
        np.zeros(0, np.int64)
    trainable[np.diff(starts) == 0] = 0  # reduceat of an empty range returns the next value
    truncated = pc.not_equal(table.column("truncation"), "").combine_chunks()
    return pa.table([
        tokens_list(packed.input_ids), tokens_list(packed.labels),
        tokens_list(packed.position_ids),
        pa.ListArray.from_arrays(per_example, pa.array(packed.seq_lengths, pa.int32())),
        pa.array(np.diff(starts).astype(np.int32)), pa.array(trainable.astype(np.int32)),
        examples_list(table.column("example_id").combine_chunks()),
        examples_list(table.column("source").combine_chunks()),
        examples_list(table.column("source_line").combine_chunks()),
        examples_list(truncated),
    ], schema=PACKED_SCHEMA)


def encode_packed(table: pa.Table, pack_length: int, stats: stats_lib.Stats,
                  split: str) -> "tuple[bytes, int]":
    """The shard's packed rows as Parquet bytes, and how many; the packing's numbers go into
    `stats` (packs, their capacity, lengths and examples per pack)."""
    packed = pack_table(table, pack_length)
    if packed.num_rows:
        lengths = packed.column("num_tokens").to_numpy()
        counts = pc.list_value_length(packed.column("seq_lengths")).to_numpy()
        stats_lib.bump(stats, "packing", split, "packs", by=packed.num_rows)
        stats_lib.bump(stats, "packing", split, "examples", by=int(counts.sum()))
        stats_lib.bump(stats, "packing", split, "tokens", by=int(lengths.sum()))
        stats_lib.bump(stats, "packing", split, "capacity", by=packed.num_rows * pack_length)
        for value, count in zip(*np.unique(lengths, return_counts=True)):
            stats_lib.bump(stats, "pack_lengths", split, str(int(value)), by=int(count))
        for value, count in zip(*np.unique(counts, return_counts=True)):
            stats_lib.bump(stats, "pack_examples", split, str(int(value)), by=int(count))
    return _parquet_bytes(packed), packed.num_rows


def _list_offsets(column: pa.Array) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _values(column: pa.Array) -> np.ndarray:
    """The flattened values of a list column (the rows' own values, whatever its offsets)."""
    return column.flatten().to_numpy(zero_copy_only=False)


def _parquet_bytes(out: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(out, sink, compression="zstd", compression_level=3,
                   row_group_size=ROW_GROUP_SIZE, write_statistics=True)
    return sink.getvalue()


def _shard_stats(stats: stats_lib.Stats, split: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy()
    trainable = table.column("num_trainable_tokens").to_numpy()
    for entry in pc.value_counts(table.column("source")).to_pylist():
        stats_lib.bump(stats, "written", split, entry["values"], by=entry["counts"])
    stats_lib.bump(stats, "tokens", split, "total", by=int(lengths.sum()))
    stats_lib.bump(stats, "tokens", split, "trainable", by=int(trainable.sum()))
    for value, count in zip(*np.unique(lengths, return_counts=True)):
        stats_lib.bump(stats, "lengths", split, str(int(value)), by=int(count))
    for value, count in zip(*np.unique(trainable, return_counts=True)):
        stats_lib.bump(stats, "trainable_lengths", split, str(int(value)), by=int(count))
    for reasons, source in zip(table.column("truncation").to_pylist(),
                               table.column("source").to_pylist()):
        if reasons:
            stats_lib.bump(stats, "rows_truncated")
            stats_lib.bump(stats, stats_lib.TRUNCATED_BY_SOURCE, source)
            for reason in reasons.split(","):
                stats_lib.bump(stats, "truncated", reason)


class WriteShards(beam.PTransform):
    """((split, shard), piece path) -> one Parquet file per shard, every shard index present."""

    def __init__(self, output: str, shard_counts: Dict[str, int], rejected_shards: int,
                 pack_length: int = 0):
        super().__init__()
        self._output = output
        self._shard_counts = shard_counts
        self._rejected_shards = rejected_shards
        self._pack_length = pack_length

    def expand(self, keyed_blobs):
        every_shard = [((split, index), None) for split, count in sorted(self._shard_counts.items())
                       for index in range(count)]
        return ((keyed_blobs, keyed_blobs.pipeline | "EveryShard" >> beam.Create(every_shard))
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteParquet" >> beam.ParDo(
                    _WriteShardFn(self._output, self._shard_counts,
                                  self._rejected_shards, self._pack_length)).with_output_types(
                                      Dict[str, Any]).with_outputs(
                        STATS_TAG, REJECTED_TAG, main="files"))


class _WriteRejectedFn(gcs.StorageDoFn):
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
               "bytes": len(data), "sha256": files.sha256_hex(data)}


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

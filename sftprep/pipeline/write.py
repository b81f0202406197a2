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

from sftprep.pipeline import files, gcs
from sftprep.pipeline.prepare import REJECTED_TAG, STATS_TAG, keyed_rejection, read_pieces
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
    """Sort a shard's rows by example id, keep the first of identical ids, write Parquet."""

    def __init__(self, output: str, shard_counts: Dict[str, int], rejected_shards: int):
        self._output = output
        self._shard_counts = shard_counts
        self._rejected_shards = rejected_shards

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
        data = encode_parquet(table)
        files.write_bytes(path, data)
        if pieces:
            FileSystems.delete(pieces)
        _shard_stats(stats, split, table)
        yield beam.pvalue.TaggedOutput(STATS_TAG, stats)
        yield {"path": f"{split}/{name}", "split": split, "rows": table.num_rows,
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

"""What prepared examples travel as on their way to the writers: piece files of a shard's rows
(Arrow IPC, written by `ShardPieces` for Beam's `PrepareExamples` in graph.py and for the
inline run), and rejected records keyed by their rejected shard.

Only the pieces' paths travel (through Beam's shuffle, or back from the inline run's
children), so no runner ever holds the dataset, and a writer reads a handful of compact files
rather than one Python object per example.

A piece stores a row's labels as one bit per token (`trained`) whenever every label is its
token's id or IGNORE_INDEX, as SFT labels are until packing: about 4.6 bytes per token with
the other columns, rather than 8.5 with labels as int32 (at 10M chat records, about 9.6 GB of
piece files instead of 17.6, written through the page cache and, at that size, to disk). Labels of
any other form are stored as they are; either way `read_pieces` gives back the same table.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zlib
from typing import Any, Iterable, List, Tuple

import numpy as np
import pyarrow as pa

from sftprep import storage
from sftprep.pipeline import files
from sftprep.tokenizer.labels import IGNORE_INDEX
from sftprep.transforms.records import Rejection
from sftprep.transforms.rows import ExampleRows

# Tokens a worker holds before it writes them as pieces (about 128 MB of ids and labels): the
# bound on its memory whatever the input's size; a piece holds about this over the number of
# shards (135k tokens, some 600 KB on disk, with 118 shards).
BUFFERED_TOKENS = 1 << 24
ShardKey = Tuple[str, int]  # (split, shard index)

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


def keyed_rejection(rejection: Rejection, shards: int) -> Tuple[int, Tuple[str, int, str, str]]:
    """(rejected shard, (source, line, reason, JSON line)): the sort key travels with the line."""
    shard = zlib.crc32(f"{rejection.source}:{rejection.line}".encode()) % shards
    line = json.dumps(rejection.as_row(), ensure_ascii=False)
    return shard, (rejection.source, rejection.line, rejection.reason, line)


def rows_table(rows: ExampleRows) -> pa.Table:
    """Prepared rows as a table in the shuffle's schema (what the writers read)."""
    return _table(rows, "labels", _list_array(rows.offsets, rows.labels))


def encode_rows(rows: ExampleRows) -> bytes:
    """Prepared rows -> one Arrow IPC stream (the compact shuffle value), labels as a bit per
    token where they allow it (see the module's docstring)."""
    sink = io.BytesIO()
    _write_stream(sink, rows)
    return sink.getvalue()


def write_piece(path: str, rows: ExampleRows) -> None:
    """`encode_rows` as a file; a local one is written as it is encoded, with no copy in
    memory first."""
    if storage.is_remote(path):
        files.write_bytes(path, encode_rows(rows))
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with pa.OSFile(path, "wb") as sink:
        _write_stream(sink, rows)


def _write_stream(sink: Any, rows: ExampleRows) -> None:
    """`rows` as one IPC stream into `sink` (a file-like object or a pyarrow file)."""
    trained = rows.labels != IGNORE_INDEX
    if np.any(trained & (rows.labels != rows.input_ids)):
        table = rows_table(rows)
    else:
        table = _table(rows, "trained", _list_array(rows.offsets, trained, np.bool_))
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _table(rows: ExampleRows, labels_name: str, labels: pa.Array) -> pa.Table:
    return pa.table({
        "example_id": pa.array(rows.example_id, pa.string()),
        "source": pa.array(rows.source, pa.string()),
        "source_line": pa.array(rows.source_line, pa.int64()),
        "input_ids": _list_array(rows.offsets, rows.input_ids),
        labels_name: labels,
        "num_trainable_tokens": pa.array(rows.num_trainable_tokens, pa.int32()),
        "truncation": pa.array([",".join(reasons) for reasons in rows.truncation], pa.string()),
    })


def _list_array(offsets: np.ndarray, values: np.ndarray, dtype=np.int32) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values.astype(dtype, copy=False)))


def decode_examples(blobs: Iterable[bytes]) -> pa.Table:
    return _concat([pa.ipc.open_stream(blob).read_all() for blob in blobs])


def _concat(tables: List[pa.Table]) -> pa.Table:
    tables = [_with_labels(table) for table in tables]
    return pa.concat_tables(tables) if tables else _SHUFFLE_SCHEMA.empty_table()


def _with_labels(table: pa.Table) -> pa.Table:
    """A piece's table with its labels back from the `trained` bits, if it has them."""
    if "trained" not in table.column_names:
        return table
    ids, bits = table.column("input_ids").combine_chunks(), table.column("trained").combine_chunks()
    values = ids.flatten().to_numpy()
    labels = np.where(bits.flatten().to_numpy(zero_copy_only=False), values,
                      np.int32(IGNORE_INDEX))
    offsets = ids.offsets.to_numpy()
    labels_list = _list_array(offsets - offsets[0], labels)
    return table.set_column(table.schema.get_field_index("trained"), "labels", labels_list)


def read_pieces(paths: Iterable[str]) -> pa.Table:
    """Piece files as one table; local ones memory-mapped rather than copied into memory (the
    mapping outlives its file handle, so no file stays open)."""
    return _concat([_read_piece(path) for path in paths])


def _read_piece(path: str) -> pa.Table:
    if storage.is_remote(path):
        return pa.ipc.open_stream(files.read_bytes(path)).read_all()
    with pa.memory_map(path) as source:
        return pa.ipc.open_stream(source).read_all()


class ShardPieces:
    """A worker's examples on their way to their shards: held as they come, whole batches,
    until they hold BUFFERED_TOKENS, then grouped by shard at once (`ExampleRows.by_shard`) and
    written as one piece file per shard under `pieces_dir/<split>-<shard>/`; what is held at
    `flush` likewise. Each call returns the (shard, path) of the pieces it wrote.

    Grouping whole batches at once, rather than splitting each batch into per-shard buffers,
    keeps the cost per batch the same whatever the number of shards: with 118 shards (10M chat
    records), per-shard buffers cost the two processes of a local run 6 to 14 s more CPU per
    million records than with 12 (bench/RESULTS.md, "Round two, pieces grouped once per
    flush")."""

    def __init__(self, pieces_dir: str):
        self._dir = pieces_dir
        self._held: List[ExampleRows] = []
        self._tokens = 0

    def add(self, rows: ExampleRows) -> List[Tuple[ShardKey, str]]:
        self._held.append(rows)
        self._tokens += rows.num_tokens
        return self.flush() if self._tokens >= BUFFERED_TOKENS else []

    def flush(self) -> List[Tuple[ShardKey, str]]:
        held, self._held, self._tokens = self._held, [], 0
        return [self._write(key, rows) for key, rows in ExampleRows.by_shard(held)]

    def _write(self, key: ShardKey, rows: ExampleRows) -> Tuple[ShardKey, str]:
        path = files.join(self._dir, f"{key[0]}-{key[1]:05d}", f"{uuid.uuid4().hex}.arrow")
        write_piece(path, rows)
        return key, path

"""What prepared examples travel as on their way to the writers: Arrow tables of a shard's
rows (Beam's `PrepareExamples` in graph.py writes them as piece files; the inline run keeps
them in memory), and rejected records keyed by their rejected shard.

Examples travel to the writers as one Arrow IPC blob per (batch, shard), so the shuffle moves a
handful of compact elements rather than one Python object per example.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Iterable, Tuple

import numpy as np
import pyarrow as pa

from sftprep.pipeline import files
from sftprep.transforms.records import Rejection
from sftprep.transforms.rows import ExampleRows

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
    return pa.table({
        "example_id": pa.array(rows.example_id, pa.string()),
        "source": pa.array(rows.source, pa.string()),
        "source_line": pa.array(rows.source_line, pa.int64()),
        "input_ids": _list_array(rows.offsets, rows.input_ids),
        "labels": _list_array(rows.offsets, rows.labels),
        "num_trainable_tokens": pa.array(rows.num_trainable_tokens, pa.int32()),
        "truncation": pa.array([",".join(reasons) for reasons in rows.truncation], pa.string()),
    }, schema=_SHUFFLE_SCHEMA)


def encode_rows(rows: ExampleRows) -> bytes:
    """Prepared rows -> one Arrow IPC stream (the compact shuffle value)."""
    table = rows_table(rows)
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



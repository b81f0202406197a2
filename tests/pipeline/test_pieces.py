"""Piece files (pipeline/prepare.py): labels travel as a bit per token when every label is its
token's id or IGNORE_INDEX, as they are before packing, and in full otherwise; the writers read
back the same table either way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from sftprep.pipeline.prepare import decode_examples, encode_rows, rows_table
from sftprep.tokenizer.labels import IGNORE_INDEX
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from tests.conftest import read_records, spec_for


def _rows(runtime, token_info):
    settings = PrepareSettings(template=spec_for("chatml", token_info), max_length=400)
    rows = prepare_batch(read_records("glaive_toolcall_en_demo.jsonl", 120), settings,
                         runtime).rows
    assert len(rows) > 100 and np.any(rows.labels == IGNORE_INDEX) \
        and np.any(rows.labels != IGNORE_INDEX)
    return rows


def _schema(blob: bytes) -> pa.Schema:
    return pa.ipc.open_stream(blob).schema


def test_sft_labels_travel_as_bits_and_come_back_whole(runtime, token_info):
    rows = _rows(runtime, token_info)
    blob = encode_rows(rows)
    schema = _schema(blob)
    assert "labels" not in schema.names and schema.field("trained").type == pa.list_(pa.bool_())
    assert decode_examples([blob]).equals(rows_table(rows))
    # ids as int32 and labels as bits: well under ids and labels both as int32.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows_table(rows).schema) as writer:
        writer.write_table(rows_table(rows))
    assert len(blob) < 0.65 * sink.getvalue().size


def test_other_labels_travel_in_full(runtime, token_info):
    rows = _rows(runtime, token_info)
    trained = np.flatnonzero(rows.labels != IGNORE_INDEX)
    labels = rows.labels.copy()
    labels[trained[0]] = labels[trained[0]] + 1  # a label that is neither its id nor ignored
    odd = dataclasses.replace(rows, labels=labels)
    blob = encode_rows(odd)
    assert "labels" in _schema(blob).names and "trained" not in _schema(blob).names
    assert decode_examples([blob]).equals(rows_table(odd))


def test_pieces_of_both_forms_read_as_one_table(runtime, token_info):
    rows = _rows(runtime, token_info)
    labels = rows.labels.copy()
    labels[np.flatnonzero(labels != IGNORE_INDEX)[-1]] += 1
    odd = dataclasses.replace(rows, labels=labels)
    table = decode_examples([encode_rows(rows), encode_rows(odd)])
    assert table.equals(pa.concat_tables([rows_table(rows), rows_table(odd)]))
    assert decode_examples([]).num_rows == 0


def test_piece_files_read_back_after_they_are_deleted(runtime, token_info, tmp_path):
    from sftprep.pipeline.prepare import read_pieces, write_piece

    rows = _rows(runtime, token_info)
    paths = [str(tmp_path / "train-00000" / f"{n}.arrow") for n in range(3)]
    for path in paths:
        write_piece(path, rows)
    assert (tmp_path / "train-00000" / "0.arrow").read_bytes() == encode_rows(rows)
    table = read_pieces(paths)
    for path in paths:  # as write_pieces does once the shard is written
        (tmp_path / "train-00000" / path.rsplit("/", 1)[1]).unlink()
    assert table.equals(pa.concat_tables([rows_table(rows)] * 3))

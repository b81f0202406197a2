"""`sftprep train` checks the values it streams: ids in [0, vocab), labels -100 or in
[0, vocab), integer columns, a label per token, no nulls, and at least one trained token. Each
failure is one line naming the file and row, raised before the bad row reaches the model: at
launch where the footer statistics show it, else when the stream reads its window."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftprep.cli import main
from sftprep.dataset import PACKED_SCHEMA, DatasetError
from sftprep.trainer import data

VOCAB = 129284  # the default tokenizer plus the markers template's four control tokens
TRAIN = ("--model", "tiny", "--max-steps", "1", "--seq-len", "64", "--batch-size", "2",
         "--eval-every", "0")
LABEL_RULE = f"a label is -100 (not trained) or in [0, {VOCAB})"


@pytest.fixture
def copy(small_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_data, root)
    return root


def set_value(shard, row, column, value, *, position=-1, **write_options):
    """Rewrite one value of one row (by default the row's last token, which is trained)."""
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[row][column][position] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, **write_options)


def train_error(root, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(["train", "--data", str(root), "--output", str(out), *TRAIN])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (out / "final").exists() and not (out / "checkpoint.json").exists()
    return err.rstrip("\n")


@pytest.mark.parametrize("ids, labels, expected", [
    ([[1, 2], [3, 4]], [[-100, 2], [-100, 4]], None),
    ([[1, 2], [3, VOCAB - 1]], [[-100, 2], [-100, VOCAB - 1]], None),
    ([[1, 2], [3, 4]], [[-100, 2], [-100, 999999]], (1, f"labels holds 999999; {LABEL_RULE}")),
    ([[1, 2], [3, 4]], [[-5, 2], [-100, 4]], (0, f"labels holds -5; {LABEL_RULE}")),
    ([[1, 2], [3, 4]], [[-100, 2], [-100, VOCAB]], (1, f"labels holds {VOCAB}; {LABEL_RULE}")),
    ([[1, -3], [3, 4]], [[-100, 2], [-100, 4]],
     (0, f"input_ids holds -3, outside [0, {VOCAB}) (the vocabulary)")),
    ([[1, 2], [VOCAB, 4]], [[-100, 2], [-100, 4]],
     (1, f"input_ids holds {VOCAB}, outside [0, {VOCAB}) (the vocabulary)")),
    # Two problems: the first in stream order is reported.
    ([[1, 2], [-1, 4]], [[-100, -7], [-100, 4]], (0, f"labels holds -7; {LABEL_RULE}")),
    ([[1, 2], [3, 4, 5]], [[-100, 2], [-100, 4]],
     (1, "labels has 2 values and input_ids 3; they must have one label per token")),
])
def test_find_bad_value(ids, labels, expected):
    def flat(rows):
        return (np.array([v for r in rows for v in r], np.int64),
                np.concatenate([[0], np.cumsum([len(r) for r in rows])]))

    (id_values, id_offsets), (label_values, label_offsets) = flat(ids), flat(labels)
    assert data.find_bad_value(id_values, label_values, id_offsets, label_offsets,
                               VOCAB) == expected


@pytest.mark.parametrize("column, value, message", [
    ("labels", 999999, f"labels holds 999999; {LABEL_RULE}"),
    ("labels", -5, f"labels holds -5; {LABEL_RULE}"),
    ("input_ids", -1, f"input_ids holds -1, outside [0, {VOCAB}) (the vocabulary)"),
    ("input_ids", VOCAB, f"input_ids holds {VOCAB}, outside [0, {VOCAB}) (the vocabulary)"),
])
def test_train_names_the_file_and_row_of_a_value_out_of_range(copy, tmp_path, capsys, column,
                                                              value, message):
    """These crashed with IndexError (or trained on garbage) before. Row 5 sits in the second
    of three row groups, so the row is counted across row groups."""
    shard = copy / "train" / "part-00001-of-00002.parquet"
    set_value(shard, 5, column, value, row_group_size=3)
    assert pq.ParquetFile(shard).metadata.num_row_groups == 3
    assert train_error(copy, tmp_path, capsys) == f"sftprep: error: {shard} row 5: {message}"


def test_a_bad_value_in_the_validation_split_is_caught_there_too(copy, tmp_path, capsys):
    shard = copy / "validation" / "part-00000-of-00001.parquet"
    set_value(shard, 2, "labels", 999999)
    out = tmp_path / "ckpt"
    assert main(["train", "--data", str(copy), "--output", str(out), *TRAIN[:-2],
                 "--eval-every", "1"]) == 2
    assert capsys.readouterr().err == (f"sftprep: error: {shard} row 2: labels holds 999999; "
                                       f"{LABEL_RULE}\n")


@pytest.mark.parametrize("column", ["input_ids", "labels"])
def test_nulls_are_refused_with_their_row(copy, tmp_path, capsys, column):
    shard = copy / "train" / "part-00000-of-00002.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[3][column] = None
    rows[6][column][0] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    assert train_error(copy, tmp_path, capsys) == f"sftprep: error: {shard} row 3: {column} is null"
    rows[3] = table.slice(3, 1).to_pylist()[0]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    assert train_error(copy, tmp_path, capsys) == (
        f"sftprep: error: {shard} row 6: {column} holds a null")


def test_a_row_with_fewer_labels_than_tokens_is_refused(copy, tmp_path, capsys):
    shard = copy / "train" / "part-00000-of-00002.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[4]["labels"].pop()
    rows[5]["labels"].append(-100)  # the totals still agree: only a per-row check sees it
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    ids = len(rows[4]["input_ids"])
    assert train_error(copy, tmp_path, capsys) == (
        f"sftprep: error: {shard} row 4: labels has {ids - 1} values and input_ids {ids}; they "
        "must have one label per token")


def test_int64_columns_are_accepted_and_float_ids_refused(copy, tmp_path, capsys):
    for shard in sorted((copy / "train").glob("*.parquet")):
        table = pq.read_table(shard)
        table = table.set_column(0, "input_ids", table.column("input_ids").cast(
            pa.list_(pa.int64())))
        pq.write_table(table.set_column(1, "labels", table.column("labels").cast(
            pa.list_(pa.int64()))), shard)
    assert main(["train", "--data", str(copy), "--output", str(tmp_path / "ok"), *TRAIN]) == 0
    shard = copy / "train" / "part-00000-of-00002.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.set_column(0, "input_ids", table.column("input_ids").cast(
        pa.list_(pa.float32()))), shard)
    capsys.readouterr()
    assert train_error(copy, tmp_path, capsys) == (
        f"sftprep: error: {shard}: column input_ids is list<element: float>, expected a list "
        "of integers")


@pytest.mark.parametrize("statistics", [True, False])
def test_a_dataset_with_no_trained_token_is_refused(copy, tmp_path, capsys, statistics):
    """It trained at loss 0.0000 without a word before."""
    for shard in sorted((copy / "train").glob("*.parquet")):
        table = pq.read_table(shard)
        masked = pa.array([[-100] * len(r) for r in table.column("labels").to_pylist()],
                          pa.list_(pa.int32()))
        pq.write_table(table.set_column(1, "labels", masked), shard,
                       write_statistics=statistics)
    assert train_error(copy, tmp_path, capsys) == (
        f"sftprep: error: --data {copy}: no label in the train split is trained (all are -100), "
        "so there is nothing to learn; check --train-on and the template the data was prepared "
        "with")


class BatchCount:
    """Counts the batches pyarrow decodes."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = pq.ParquetFile.iter_batches

        def counted(parquet, *args, **kwargs):
            for batch in original(parquet, *args, **kwargs):
                self.count += 1
                yield batch

        monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)


def test_looking_for_a_trained_token_reads_one_batch_or_skips_by_statistics(copy, monkeypatch):
    shards = data.open_dataset(str(copy)).shards("train")
    counter = BatchCount(monkeypatch)
    assert data.has_trained_token(shards) and counter.count == 1
    for shard in shards:  # the first shard all -100 with statistics: skipped unread
        table = pq.read_table(shard)
        masked = pa.array([[-100] * len(r) for r in table.column("labels").to_pylist()],
                          pa.list_(pa.int32()))
        pq.write_table(table.set_column(1, "labels", masked), shard, row_group_size=2)
        break
    counter.count = 0
    assert data.has_trained_token(shards) and counter.count == 1


def test_values_are_checked_window_by_window_as_the_stream_reaches_them(copy, monkeypatch):
    """No pass ahead of training: the rows before the bad window are served, and the error
    comes when the window holding the bad row is read."""
    monkeypatch.setattr(data, "MAX_BLOCK_ROWS", 2)
    monkeypatch.setattr(data, "WINDOW_BLOCKS", 2)
    shard = copy / "train" / "part-00001-of-00002.parquet"
    set_value(shard, 7, "labels", -5)
    dataset = data.open_dataset(str(copy))
    blocks = data.list_blocks(dataset.shards("train"), 1)
    assert [b.rows for b in blocks] == [2] * 8
    counter = BatchCount(monkeypatch)
    stream = data.ExampleStream(blocks, seed=0, rank=0, world_size=1, shuffle=False, epochs=1,
                                vocab_size=dataset.vocab_size)
    served = [stream.next() for _ in range(12)]  # three windows of four rows
    assert all(e is not None for e in served)
    read_before = counter.count
    assert read_before <= 6  # two blocks a window, one batch each: nothing read ahead
    with pytest.raises(DatasetError) as error:
        stream.next()
    assert str(error.value) == f"{shard} row 7: labels holds -5; {LABEL_RULE}"


@pytest.mark.parametrize("pointer, message", [
    ('{"step": 1, "path": "../elsewhere/step.pt"}',
     "checkpoint.json: path '../elsewhere/step.pt' leads out of {out}"),
    ('{"step": 1, "path": "/etc/passwd"}', "checkpoint.json: path '/etc/passwd' is absolute"),
    ("[]", "checkpoint.json must hold a JSON object, not a list"),
    ('{"step": "1", "path": "x"}', "checkpoint.json must hold an integer step and a path"),
    ('{"step": 1, "path": "checkpoints/step-00000001.pt"}',
     "checkpoints/step-00000001.pt: not a checkpoint of `sftprep train` ("),
])
def test_a_forged_checkpoint_pointer_is_one_line(copy, tmp_path, capsys, pointer, message):
    out = tmp_path / "ckpt"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step-00000001.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "elsewhere").mkdir()
    (out / "checkpoint.json").write_text(pointer)
    code = main(["train", "--data", str(copy), "--output", str(out), *TRAIN, "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"sftprep: error: {out}/" + message.format(out=out)), err
    assert not (out / "final").exists()


@pytest.mark.parametrize("statistics", [True, False])
def test_footer_statistics_catch_an_out_of_range_value_at_launch(copy, monkeypatch, statistics):
    """With statistics, listing the blocks already fails, reading only the suspect row group
    (rows 3-5); without them, nothing is read until the stream reaches the row."""
    shard = copy / "train" / "part-00001-of-00002.parquet"
    set_value(shard, 5, "labels", 999999, row_group_size=3, write_statistics=statistics)
    dataset = data.open_dataset(str(copy))
    counter = BatchCount(monkeypatch)
    expected = f"{shard} row 5: labels holds 999999; {LABEL_RULE}"
    if statistics:
        with pytest.raises(DatasetError) as error:
            data.list_blocks(dataset.shards("train"), 1, VOCAB)
        assert str(error.value) == expected and counter.count == 1
        return
    blocks = data.list_blocks(dataset.shards("train"), 1, VOCAB)
    assert counter.count == 0
    with pytest.raises(DatasetError) as error:
        list(data.ExampleStream(blocks, seed=0, rank=0, world_size=1, shuffle=False, epochs=1,
                                vocab_size=VOCAB))
    assert str(error.value) == expected


def test_a_label_statistics_cannot_see_is_still_caught_by_the_window(copy):
    shard = copy / "train" / "part-00000-of-00002.parquet"
    set_value(shard, 2, "labels", -5)  # the row group's minimum is still -100
    dataset = data.open_dataset(str(copy))
    blocks = data.list_blocks(dataset.shards("train"), 1, VOCAB)  # passes
    with pytest.raises(DatasetError) as error:
        list(data.ExampleStream(blocks, seed=0, rank=0, world_size=1, shuffle=False, epochs=1,
                                vocab_size=VOCAB))
    assert str(error.value) == f"{shard} row 2: labels holds -5; {LABEL_RULE}"


def as_packs_of_one(shard):
    """Rewrite an unpacked shard as packed rows of one example each (PACKED_SCHEMA)."""
    rows = pq.read_table(shard).to_pylist()
    packed = [{"input_ids": r["input_ids"], "labels": r["labels"],
               "position_ids": list(range(r["num_tokens"])), "seq_lengths": [r["num_tokens"]],
               "num_tokens": r["num_tokens"], "num_trainable_tokens": r["num_trainable_tokens"],
               "example_ids": [r["example_id"]], "sources": [r["source"]],
               "source_lines": [r["source_line"]], "truncated": [r["truncated"]]}
              for r in rows]
    pq.write_table(pa.Table.from_pylist(packed, schema=PACKED_SCHEMA), shard)


@pytest.mark.parametrize("packed_shard", [1, 0])
def test_a_split_mixing_packed_and_unpacked_shards_is_refused_up_front(copy, tmp_path, capsys,
                                                                       monkeypatch, packed_shard):
    """Blocks of 2 rows, one block a window: no window ever holds rows of both shards, yet
    listing the blocks (footers only, no row decoded) refuses the split, whichever shard comes
    first; `sftprep train` stops there in one line."""
    monkeypatch.setattr(data, "MAX_BLOCK_ROWS", 2)
    monkeypatch.setattr(data, "WINDOW_BLOCKS", 1)
    shards = sorted((copy / "train").glob("*.parquet"))
    as_packs_of_one(shards[packed_shard])
    unpacked = shards[1 - packed_shard]
    message = (f"{shards[packed_shard]} holds packed rows and {unpacked} does not; a split is "
               "packed throughout or not at all")
    counter = BatchCount(monkeypatch)
    with pytest.raises(DatasetError) as error:
        data.list_blocks([str(s) for s in shards], 1, VOCAB)
    assert str(error.value) == message and counter.count == 0
    assert train_error(copy, tmp_path, capsys) == f"sftprep: error: {message}"

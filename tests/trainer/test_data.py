"""Reading the pipeline's shards: order by seed, disjoint ranks, exact positions, LATEST."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from sftprep.config import ConfigError
from sftprep.pipeline import publish
from sftprep.trainer import data


def all_ids(out, split="train"):
    return [i for p in sorted((out / split).glob("*.parquet"))
            for i in pq.read_table(p, columns=["example_id"]).column(0).to_pylist()]


def stream(dataset, *, rank=0, world=1, seed=0, epochs=1, start=data.Position()):
    blocks = data.list_blocks(dataset.shards("train"), world)
    return data.ExampleStream(blocks, seed=seed, rank=rank, world_size=world, shuffle=True,
                              epochs=epochs, vocab_size=dataset.vocab_size, start=start)


def test_one_epoch_is_every_row_once_in_a_seeded_order(alpaca_data):
    dataset = data.open_dataset(str(alpaca_data))
    first = [e.example_id for e in stream(dataset, seed=1)]
    assert sorted(first) == sorted(all_ids(alpaca_data))
    assert first == [e.example_id for e in stream(dataset, seed=1)]
    assert first != [e.example_id for e in stream(dataset, seed=2)]
    assert first != sorted(first)  # shuffled, not file order
    rows = {r["example_id"]: r for p in sorted((alpaca_data / "train").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()}
    for example in stream(dataset, seed=1):
        row = rows[example.example_id]
        assert example.input_ids.tolist() == row["input_ids"]
        assert example.labels.tolist() == row["labels"]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_blocks_that_cover_the_split(alpaca_data, world):
    dataset = data.open_dataset(str(alpaca_data))
    seen = [[e.example_id for e in stream(dataset, rank=r, world=world)] for r in range(world)]
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(seen[a]) & set(seen[b])
    assert sorted(sum(seen, [])) == sorted(all_ids(alpaca_data))
    sizes = [len(s) for s in seen]
    assert max(sizes) - min(sizes) <= data.MAX_BLOCK_ROWS


def test_a_saved_position_resumes_the_same_sequence_across_epochs(alpaca_data):
    dataset = data.open_dataset(str(alpaca_data))
    full = stream(dataset, rank=1, world=2, epochs=3)
    reference = [e.example_id for e in full]
    # Blocks are dealt anew each epoch, so a rank sees other rows in the next epoch.
    assert len(set(reference)) > len(reference) / 3
    for cut in (0, 1, 100, len(reference) // 3, len(reference) // 3 + 5, len(reference) - 1):
        head = stream(dataset, rank=1, world=2, epochs=3)
        for _ in range(cut):
            head.next()
        example = head.next()
        head.unread(example)  # the packer gives back what does not fit: not consumed
        rest = stream(dataset, rank=1, world=2, epochs=3, start=head.position)
        assert [e.example_id for e in rest] == reference[cut:]


def test_latest_pointer_is_followed(alpaca_data, tmp_path):
    run = tmp_path / "out" / "runs" / "20260101T000000Z-abcdef01"
    shutil.copytree(alpaca_data, run)
    publish.write_latest(str(tmp_path / "out"), "20260101T000000Z-abcdef01")
    dataset = data.open_dataset(str(tmp_path / "out"))
    assert dataset.root == str(run)
    assert len(dataset.shards("train")) == 2 and dataset.vocab_size == 129284


def test_a_directory_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no manifest.json"):
        data.open_dataset(str(tmp_path))


@pytest.fixture
def many_row_groups(alpaca_data, tmp_path, monkeypatch):
    """The alpaca train split rewritten in 40-row row groups, read in 16-row blocks, 4 blocks
    per window and 10-row batches: many windows, and blocks that straddle read batches."""
    out = tmp_path / "out"
    shutil.copytree(alpaca_data, out)
    for shard in sorted((out / "train").glob("*.parquet")):
        pq.write_table(pq.read_table(shard), shard, row_group_size=40)
    monkeypatch.setattr(data, "MAX_BLOCK_ROWS", 16)
    monkeypatch.setattr(data, "WINDOW_BLOCKS", 4)
    monkeypatch.setattr(data, "READ_BATCH_ROWS", 10)
    return out


class ReadLog:
    """Every window read (its rows) and every batch decoded, with whole-row-group reads refused."""

    def __init__(self, monkeypatch):
        self.windows, self.batches = [], []
        read_blocks, iter_batches = data.read_blocks, pq.ParquetFile.iter_batches

        def logged_read_blocks(blocks, vocab_size=None):
            result = read_blocks(blocks, vocab_size)
            self.windows.append(result[3])
            return result

        def logged_iter_batches(parquet, *args, **kwargs):
            for batch in iter_batches(parquet, *args, **kwargs):
                self.batches.append(batch.num_rows)
                yield batch

        def refused(*args, **kwargs):
            raise AssertionError("a whole row group or file was read")

        monkeypatch.setattr(data, "read_blocks", logged_read_blocks)
        monkeypatch.setattr(pq.ParquetFile, "iter_batches", logged_iter_batches)
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", refused)
        monkeypatch.setattr(pq.ParquetFile, "read", refused)


def test_reading_streams_window_by_window_with_bounded_memory(many_row_groups, monkeypatch):
    dataset = data.open_dataset(str(many_row_groups))
    rows = {}
    groups = {}
    for shard in dataset.shards("train"):
        parquet = pq.ParquetFile(shard)
        assert parquet.metadata.num_row_groups >= 12
        for g in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(g)
            groups[(shard, g)] = table.column("example_id").to_pylist()
            rows.update((r["example_id"], r) for r in table.to_pylist())
    blocks = data.list_blocks(dataset.shards("train"), 2)
    assert max(b.rows for b in blocks) == 16 and 8 in {b.rows for b in blocks}  # 16 + 16 + 8
    log = ReadLog(monkeypatch)

    epoch = []
    for rank in (0, 1):
        log.windows.clear()
        seen = [e for e in stream(dataset, rank=rank, world=2, seed=3)]
        mine = data.rank_blocks(blocks, seed=3, epoch=0, rank=rank, world_size=2, shuffle=True)
        windows = [mine[i:i + 4] for i in range(0, len(mine), 4)]
        # One read per window, in order, each holding exactly its 4 blocks' rows (<= 64).
        assert len(log.windows) == len(windows) > 5
        assert max(len(w) for w in log.windows) <= data.WINDOW_BLOCKS * data.MAX_BLOCK_ROWS
        start = 0
        for window, read in zip(windows, log.windows):
            expected = [i for b in window for i in groups[(b.path, b.row_group)][b.start:b.stop]]
            assert read == expected
            served = [e.example_id for e in seen[start:start + len(expected)]]
            assert sorted(served) == sorted(expected)  # shuffled within the window only
            start += len(expected)
        assert start == len(seen)
        for example in seen:
            assert example.input_ids.tolist() == rows[example.example_id]["input_ids"]
            assert example.labels.tolist() == rows[example.example_id]["labels"]
        epoch += [e.example_id for e in seen]
    assert sorted(epoch) == sorted(rows)  # every row once over both ranks
    assert max(log.batches) <= data.READ_BATCH_ROWS

    # Resuming mid-window (and on a window boundary) in a later window, in the next epoch too,
    # reads only the window holding the position and those after it.
    reference = [e.example_id for e in stream(dataset, rank=1, world=2, seed=3, epochs=2)]
    per_epoch = len(reference) // 2
    for cut in (per_epoch // 2 + 7, 4 * 16 * 3, per_epoch + 100):
        head = stream(dataset, rank=1, world=2, seed=3, epochs=2)
        for _ in range(cut):
            head.next()
        log.windows.clear()
        rest = stream(dataset, rank=1, world=2, seed=3, epochs=2, start=head.position)
        assert [e.example_id for e in rest] == reference[cut:]
        read = sum(len(w) for w in log.windows)
        assert len(reference) - cut <= read < len(reference) - cut + 4 * 16


def test_a_block_at_the_start_of_a_row_group_decodes_only_its_rows(many_row_groups,
                                                                   monkeypatch):
    (shard, *_) = data.open_dataset(str(many_row_groups)).shards("train")
    log = ReadLog(monkeypatch)
    ids, labels, offsets, example_ids = data.read_blocks([data.Block(shard, 5, 0, 16),
                                                          data.Block(shard, 2, 24, 40)])
    expected = pq.read_table(shard).slice(200, 16).column("example_id").to_pylist() + \
        pq.read_table(shard).slice(104, 16).column("example_id").to_pylist()
    assert example_ids == expected
    assert len(offsets) == 33 and len(ids) == len(labels) == offsets[-1]
    # Row group 5: two 10-row batches for rows 0-16, not all four; row group 2: all four.
    assert log.batches == [10] * 6

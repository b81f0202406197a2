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
                              epochs=epochs, start=start)


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

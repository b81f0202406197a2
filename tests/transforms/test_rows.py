"""ExampleRows.by_shard: every row of a list of parts in its shard, in its order, with its own
tokens."""

from __future__ import annotations

import numpy as np
import pytest

from sftprep.transforms.rows import ExampleRows


def random_rows(rng: np.random.Generator, count: int, shards: int) -> ExampleRows:
    lengths = rng.integers(0, 30, count)  # empty rows too
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = int(offsets[-1])
    return ExampleRows(
        [f"id{i}" for i in range(count)], [f"source{i % 3}" for i in range(count)],
        np.arange(count, dtype=np.int64) * 7, rng.integers(0, 1000, tokens).astype(np.int32),
        rng.integers(-100, 1000, tokens).astype(np.int32), offsets,
        rng.integers(0, 100, count).astype(np.int32),
        [("max_length",) if i % 5 == 0 else () for i in range(count)],
        [str(rng.choice(["train", "validation"])) for _ in range(count)],
        rng.integers(0, shards, count).astype(np.int64))


def as_tuples(rows: ExampleRows):
    return [(e.example_id, e.source, e.source_line, e.input_ids.tolist(), e.labels.tolist(),
             e.num_trainable_tokens, e.truncation, e.split, e.shard) for e in rows.examples()]


@pytest.mark.parametrize("shards", [1, 2, 12, 118])
def test_by_shard_gives_each_shard_its_rows_in_order(shards):
    rng = np.random.default_rng(shards)
    for count in (0, 1, 5, 300):
        rows = random_rows(rng, count, shards)
        expected = {}
        for row in as_tuples(rows):
            expected.setdefault((row[-1], row[-2] != "train"), []).append(row)
        parts = list(ExampleRows.by_shard([rows]))
        # keys in (shard, split) order, each shard's rows as a row-by-row walk finds them
        assert [key for key, _ in parts] == [
            ("train" if not validation else "validation", shard)
            for shard, validation in sorted(expected)]
        for (split, shard), part in parts:
            assert as_tuples(part) == expected[(shard, split != "train")]
            assert part.offsets[0] == 0 and part.num_tokens == len(part.input_ids)
            assert part.input_ids.dtype == np.int32 and part.offsets.dtype == np.int64


@pytest.mark.parametrize("shards", [1, 12, 118])
def test_by_shard_takes_parts_as_one_and_empties_their_list(shards):
    """Parts of every size (empty ones too) give what their rows as one part give, and the list
    is emptied: the parts are let go as their tokens move."""
    rng = np.random.default_rng(100 + shards)
    rows = random_rows(rng, 500, shards)
    cuts = [0, 0, 1, 7, 7, 120, 333, 499, 500]
    held = [slice_rows(rows, low, high) for low, high in zip(cuts, cuts[1:])]
    assert sum(len(part) for part in held) == len(rows)
    grouped = list(ExampleRows.by_shard(held))
    assert held == []
    whole = list(ExampleRows.by_shard([rows]))
    assert [key for key, _ in grouped] == [key for key, _ in whole]
    for (_, part), (_, expected) in zip(grouped, whole):
        assert as_tuples(part) == as_tuples(expected)
        assert part.offsets[0] == 0 and part.num_tokens == len(part.input_ids)
    assert list(ExampleRows.by_shard([])) == []
    empty = [ExampleRows.empty(), ExampleRows.empty()]
    assert list(ExampleRows.by_shard(empty)) == [] and empty == []


def slice_rows(rows: ExampleRows, low: int, high: int) -> ExampleRows:
    """Rows [low, high) as their own part, offsets from 0."""
    first, last = rows.offsets[low], rows.offsets[high]
    return ExampleRows(
        rows.example_id[low:high], rows.source[low:high], rows.source_line[low:high],
        rows.input_ids[first:last].copy(), rows.labels[first:last].copy(),
        rows.offsets[low:high + 1] - first, rows.num_trainable_tokens[low:high],
        rows.truncation[low:high], rows.split[low:high], rows.shard[low:high])

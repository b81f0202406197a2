"""ExampleRows.by_shard: every row in its shard, in its order, with its own tokens."""

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
        parts = list(rows.by_shard())
        # keys in (shard, split) order, each shard's rows as a row-by-row walk finds them
        assert [key for key, _ in parts] == [
            ("train" if not validation else "validation", shard)
            for shard, validation in sorted(expected)]
        for (split, shard), part in parts:
            assert as_tuples(part) == expected[(shard, split != "train")]
            assert part.offsets[0] == 0 and part.num_tokens == len(part.input_ids)
            assert part.input_ids.dtype == np.int32 and part.offsets.dtype == np.int64

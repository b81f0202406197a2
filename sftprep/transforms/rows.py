"""Prepared examples column by column: what a batch hands to the writers.

Token ids and labels of all rows lie end to end in two arrays, cut by `offsets`, so a batch of
examples moves to the shuffle and into Arrow without a Python object per example.

>>> rows = ExampleRows(["a"], ["f"], np.array([1]), np.array([1, 2], np.int32),
...                    np.array([-100, 2], np.int32), np.array([0, 2]), np.array([1], np.int32),
...                    [()], ["train"], np.array([0]))
>>> [(e.example_id, e.input_ids.tolist(), e.labels.tolist()) for e in rows.examples()]
[('a', [1, 2], [-100, 2])]
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from sftprep.transforms.truncate import Truncation


@dataclasses.dataclass(frozen=True)
class Example:
    """One prepared example (the row view of `ExampleRows`)."""

    example_id: str
    source: str
    source_line: int
    input_ids: np.ndarray
    labels: np.ndarray
    num_trainable_tokens: int
    truncation: Tuple[Truncation, ...]
    split: str
    shard: int


@dataclasses.dataclass(frozen=True)
class ExampleRows:
    example_id: List[str]
    source: List[str]
    source_line: np.ndarray  # int64
    input_ids: np.ndarray  # int32, every row's tokens end to end
    labels: np.ndarray  # int32
    offsets: np.ndarray  # int64: row r is [offsets[r], offsets[r + 1])
    num_trainable_tokens: np.ndarray  # int32
    truncation: List[Tuple[Truncation, ...]]  # () when the example fit as it was
    split: List[str]
    shard: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.example_id)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def empty(cls) -> "ExampleRows":
        nothing = np.zeros(0, np.int64)
        return cls([], [], nothing, np.zeros(0, np.int32), np.zeros(0, np.int32),
                   np.zeros(1, np.int64), np.zeros(0, np.int32), [], [], nothing)

    @classmethod
    def concat(cls, parts: Sequence["ExampleRows"]) -> "ExampleRows":
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            [i for p in parts for i in p.example_id], [s for p in parts for s in p.source],
            np.concatenate([p.source_line for p in parts]),
            np.concatenate([p.input_ids for p in parts]), np.concatenate([p.labels for p in parts]),
            offsets, np.concatenate([p.num_trainable_tokens for p in parts]),
            [t for p in parts for t in p.truncation], [s for p in parts for s in p.split],
            np.concatenate([p.shard for p in parts]))

    def by_shard(self) -> Iterator[Tuple[Tuple[str, int], "ExampleRows"]]:
        """((split, shard), its rows, in their order) for every shard that has rows.

        The tokens are gathered once, grouped by shard, and each shard's rows are a slice of
        that: linear in the tokens whatever the number of shards (a pass over the batch's
        tokens per shard took 25 ms for 1024 rows in 118 shards; this takes 3.1 ms).
        """
        splits = sorted(set(self.split))
        codes = self.shard * len(splits) + np.array([splits.index(s) for s in self.split],
                                                    dtype=np.int64).reshape(-1)
        order = np.argsort(codes, kind="stable")
        keys, starts = np.unique(codes[order], return_index=True)
        ends = [*starts[1:].tolist(), len(order)]
        lengths = np.diff(self.offsets)[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.repeat(self.offsets[:-1][order] - offsets[:-1], lengths) + \
            np.arange(offsets[-1], dtype=np.int64)
        input_ids, labels = self.input_ids[tokens], self.labels[tokens]
        for code, start, end in zip(keys.tolist(), starts.tolist(), ends):
            pick, first, last = order[start:end], offsets[start], offsets[end]
            rows, split = pick.tolist(), splits[code % len(splits)]
            # Copies, not views: a shard's buffer must hold only its own tokens, not the batch's.
            yield (split, code // len(splits)), ExampleRows(
                [self.example_id[r] for r in rows], [self.source[r] for r in rows],
                self.source_line[pick], input_ids[first:last].copy(), labels[first:last].copy(),
                offsets[start:end + 1] - first, self.num_trainable_tokens[pick],
                [self.truncation[r] for r in rows], [split] * len(rows), self.shard[pick])

    def examples(self) -> List[Example]:
        """Row by row (for tests and `inspect`; the pipeline stays columnar)."""
        return [Example(self.example_id[r], self.source[r], int(self.source_line[r]),
                        self.input_ids[self.offsets[r]:self.offsets[r + 1]],
                        self.labels[self.offsets[r]:self.offsets[r + 1]],
                        int(self.num_trainable_tokens[r]),
                        self.truncation[r],
                        self.split[r], int(self.shard[r])) for r in range(len(self))]


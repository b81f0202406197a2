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


_NO_TOKENS = np.zeros(0, np.int32)


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

    @classmethod
    def by_shard(cls, parts: List["ExampleRows"]
                 ) -> Iterator[Tuple[Tuple[str, int], "ExampleRows"]]:
        """((split, shard), its rows, in their order) for every shard that has rows in `parts`,
        taken end to end as one.

        The tokens are moved once into arrays grouped by shard, and each shard's rows are a
        view of those: linear in the tokens whatever the number of shards or parts. `parts` is
        emptied as its tokens are moved, each part let go once moved, so the tokens are held
        about once, not twice.
        """
        count = sum(len(part) for part in parts)
        if not count:
            parts.clear()
            return
        splits = sorted({split for part in parts for split in part.split})
        split_code = {split: code for code, split in enumerate(splits)}
        codes = np.concatenate([part.shard for part in parts]) * len(splits) + np.fromiter(
            (split_code[split] for part in parts for split in part.split), np.int64, count)
        order = np.argsort(codes, kind="stable")
        keys, starts = np.unique(codes[order], return_index=True)
        ends = [*starts[1:].tolist(), count]
        lengths = np.concatenate([np.diff(part.offsets) for part in parts])
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(lengths[order], out=offsets[1:])
        rank = np.empty(count, dtype=np.int64)
        rank[order] = np.arange(count)
        row_start = offsets[:-1][rank]  # where each row, in the parts' order, lands
        whole = cls.concat([dataclasses.replace(part, input_ids=_NO_TOKENS, labels=_NO_TOKENS,
                                                offsets=np.zeros(len(part) + 1, np.int64))
                            for part in parts])  # every column but the tokens
        input_ids = np.empty(offsets[-1], dtype=np.int32)
        labels = np.empty(offsets[-1], dtype=np.int32)
        first = 0
        while parts:
            part = parts.pop(0)
            span = slice(first, first + len(part))
            moved = np.repeat(row_start[span] - part.offsets[:-1], lengths[span]) + \
                np.arange(part.num_tokens)
            input_ids[moved], labels[moved] = part.input_ids, part.labels
            first += len(part)
        for code, start, end in zip(keys.tolist(), starts.tolist(), ends):
            pick, low, high = order[start:end], offsets[start], offsets[end]
            rows, split = pick.tolist(), splits[code % len(splits)]
            yield (split, code // len(splits)), cls(
                [whole.example_id[r] for r in rows], [whole.source[r] for r in rows],
                whole.source_line[pick], input_ids[low:high], labels[low:high],
                offsets[start:end + 1] - low, whole.num_trainable_tokens[pick],
                [whole.truncation[r] for r in rows], [split] * len(rows), whole.shard[pick])

    def examples(self) -> List[Example]:
        """Row by row (for tests and `inspect`; the pipeline stays columnar)."""
        return [Example(self.example_id[r], self.source[r], int(self.source_line[r]),
                        self.input_ids[self.offsets[r]:self.offsets[r + 1]],
                        self.labels[self.offsets[r]:self.offsets[r + 1]],
                        int(self.num_trainable_tokens[r]),
                        self.truncation[r],
                        self.split[r], int(self.shard[r])) for r in range(len(self))]


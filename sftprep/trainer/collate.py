"""Examples into fixed-shape batches, by padding or by packing. Plain numpy; the loop moves
batches to the device.

Labels stay as the pipeline wrote them (same length as input_ids, -100 = not trained) and the
loss shifts them, the Hugging Face convention. Packing adds one rule: the first label of every
example in a row becomes -100. Unpacked, that label is never a target (nothing precedes the
first token); packed, it would make the previous example's last token predict this example's
first one, i.e. train across the boundary.

Rows packed by `sftprep run --pack-length` (examples with `members`) take the packing path
as they are: each stored pack is one row, split into its examples by seq_lengths, so it gets
the same segments and position ids as on-the-fly packing, whether or not --pack is given.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from sftprep.dataset import IGNORE_INDEX
from sftprep.errors import ConfigError
from sftprep.trainer.data import ExampleStream, TrainingSequence

PAD_ID = 0  # any valid id: padded positions are masked from attention and loss


@dataclasses.dataclass
class Batch:
    input_ids: np.ndarray  # (B, T) int64
    labels: np.ndarray  # (B, T) int64
    position_ids: np.ndarray  # (B, T) int64, restarting at 0 for every packed example
    attention_mask: Optional[np.ndarray]  # (B, T) 1 = real token; padding mode only
    segments: Optional[np.ndarray]  # (B, T) example number within its row; packing only
    example_ids: List[str]
    num_tokens: int  # real tokens (not padding)
    num_trained: int  # positions the loss counts: labels[:, 1:] != -100
    truncated: int  # examples cut to fit --seq-len

    @property
    def slots(self) -> int:
        return int(self.input_ids.size)

    @property
    def max_token_id(self) -> int:
        return int(self.input_ids.max()) if self.input_ids.size else -1


def _fit(example: TrainingSequence, seq_len: int) -> TrainingSequence:
    if len(example.input_ids) <= seq_len:
        return example
    return TrainingSequence(example.input_ids[:seq_len], example.labels[:seq_len],
                            example.example_id)


def pad_examples(examples: Sequence[TrainingSequence], seq_len: int) -> Batch:
    """One example per row, right-padded to the longest (at most seq_len).

    >>> e = TrainingSequence(np.array([5, 6, 7]), np.array([-100, 6, 7]), "a")
    >>> pad_examples([e, TrainingSequence(e.input_ids[:1], e.labels[:1], "b")], 8).labels.tolist()
    [[-100, 6, 7], [-100, -100, -100]]
    """
    fitted = [_fit(e, seq_len) for e in examples]
    width = max(len(e.input_ids) for e in fitted)
    input_ids = np.full((len(fitted), width), PAD_ID, np.int64)
    labels = np.full((len(fitted), width), IGNORE_INDEX, np.int64)
    attention_mask = np.zeros((len(fitted), width), np.int64)
    for row, example in enumerate(fitted):
        n = len(example.input_ids)
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = (
            example.input_ids, example.labels, 1)
    position_ids = np.broadcast_to(np.arange(width), input_ids.shape).copy()
    return Batch(input_ids, labels, position_ids, attention_mask, None,
                 [e.example_id for e in examples], int(attention_mask.sum()),
                 int((labels[:, 1:] != IGNORE_INDEX).sum()),
                 sum(a is not b for a, b in zip(examples, fitted)))


def pack_rows(rows: Sequence[Sequence[TrainingSequence]], seq_len: int) -> Batch:
    """Each row's examples back to back in one seq_len row.

    Every example gets its own segment number (from 1) and positions from 0; the padding at
    the end of a row is one more segment, so every position attends to at least itself.

    >>> a, b = (TrainingSequence(np.array(x), np.array(x), i)
    ...         for x, i in (([1, 2], "a"), ([3, 4, 5], "b")))
    >>> batch = pack_rows([[a, b]], 6)
    >>> batch.labels.tolist(), batch.position_ids.tolist(), batch.segments.tolist()
    ([[-100, 2, -100, 4, 5, -100]], [[0, 1, 0, 1, 2, 0]], [[1, 1, 2, 2, 2, 3]])
    """
    input_ids = np.full((len(rows), seq_len), PAD_ID, np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, np.int64)
    position_ids = np.zeros((len(rows), seq_len), np.int64)
    segments = np.zeros((len(rows), seq_len), np.int64)
    example_ids, num_tokens, truncated = [], 0, 0
    for row, examples in enumerate(rows):
        cursor = 0
        for number, example in enumerate(examples, start=1):
            fitted = _fit(example, seq_len)
            truncated += fitted is not example
            n = len(fitted.input_ids)
            end = cursor + n
            assert end <= seq_len, "pack_rows got a row longer than seq_len"
            input_ids[row, cursor:end] = fitted.input_ids
            labels[row, cursor:end] = fitted.labels
            labels[row, cursor] = IGNORE_INDEX  # no target across the boundary
            position_ids[row, cursor:end] = np.arange(n)
            segments[row, cursor:end] = number
            example_ids.append(example.example_id)
            cursor = end
        position_ids[row, cursor:] = np.arange(seq_len - cursor)
        segments[row, cursor:] = len(examples) + 1
        num_tokens += cursor
    return Batch(input_ids, labels, position_ids, None, segments, example_ids, num_tokens,
                 int((labels[:, 1:] != IGNORE_INDEX).sum()), truncated)


def _stored_packs(packs: Sequence[TrainingSequence], seq_len: int) -> Batch:
    """Stored packs of a packed dataset, one per row."""
    for example in packs:
        if len(example.input_ids) > seq_len:
            raise ConfigError(f"a packed row of {len(example.input_ids)} tokens "
                              f"({example.example_id[:80]}) is longer than --seq-len "
                              f"{seq_len}; use --seq-len of at least the data's --pack-length")
    return pack_rows([example.unpacked() for example in packs], seq_len)


def next_batch(stream: ExampleStream, *, batch_size: int, seq_len: int,
               pack: bool) -> Optional[Batch]:
    """The next batch from the stream, or None when it is used up.

    Packing is first-fit in stream order: each example goes into the first row with room; the
    first example that fits in no row closes the batch and is given back to the stream, so the
    stream's position always says exactly which examples went into batches.
    """
    first = stream.next()
    if first is None:
        return None
    if first.members is not None or not pack:  # one example (or stored pack) per row
        taken = [first]
        while len(taken) < batch_size and (example := stream.next()) is not None:
            taken.append(example)
        if first.members is not None:
            return _stored_packs(taken, seq_len)
        return pad_examples(taken, seq_len)
    stream.unread(first)
    rows: List[List[TrainingSequence]] = [[] for _ in range(batch_size)]
    room = [seq_len] * batch_size
    while (example := stream.next()) is not None:
        n = min(len(example.input_ids), seq_len)
        row = next((r for r in range(batch_size) if room[r] >= n), None)
        if row is None:
            stream.unread(example)
            break
        rows[row].append(example)
        room[row] -= n
    return pack_rows(rows, seq_len)  # rows[0] holds at least `first`

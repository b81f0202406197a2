"""Padding and packing on plain arrays: shapes, labels, positions, segments, and the stream's
position when the packer gives an example back."""

from __future__ import annotations

import numpy as np
import pytest

from sftprep.trainer.collate import IGNORE_INDEX, pack_rows, pad_examples
from sftprep.trainer.data import TrainingSequence


def ex(ids, trained_from, name):
    ids = np.array(ids, np.int32)
    labels = np.where(np.arange(len(ids)) >= trained_from, ids, IGNORE_INDEX).astype(np.int32)
    return TrainingSequence(ids, labels, name)


def test_pad_to_longest_with_ignored_labels_and_mask():
    batch = pad_examples([ex([1, 2, 3, 4], 2, "a"), ex([5, 6], 1, "b")], seq_len=16)
    assert batch.input_ids.shape == (2, 4)
    assert batch.labels.tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert (batch.num_tokens, batch.num_trained, batch.slots) == (6, 3, 8)
    assert batch.example_ids == ["a", "b"] and batch.segments is None


def test_pad_cuts_examples_longer_than_seq_len():
    batch = pad_examples([ex(range(10, 20), 0, "long")], seq_len=4)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13]] and batch.truncated == 1


def test_pack_restarts_positions_and_never_targets_across_examples():
    a, b, c = ex([1, 2, 3], 0, "a"), ex([4, 5], 0, "b"), ex([6, 7, 8, 9], 1, "c")
    batch = pack_rows([[a, b], [c]], seq_len=6)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    # Every example's first label is ignored: with the shift it would be predicted from the
    # previous example's last token.
    assert batch.labels.tolist() == [[-100, 2, 3, -100, 5, -100], [-100, 7, 8, 9, -100, -100]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch.segments.tolist() == [[1, 1, 1, 2, 2, 3], [1, 1, 1, 1, 2, 2]]
    assert (batch.num_tokens, batch.slots, batch.num_trained) == (9, 12, 6)


class ListStream:
    """The ExampleStream interface over a list, for the packer."""

    def __init__(self, examples):
        self.examples, self.index = list(examples), 0

    def next(self):
        if self.index == len(self.examples):
            return None
        self.index += 1
        return self.examples[self.index - 1]

    def unread(self, example):
        self.index -= 1
        assert self.examples[self.index] is example


@pytest.mark.parametrize("lengths, expected_rows", [
    ([3, 3, 2], [["0", "1"], ["2"]]),  # 3+3 fill row 0, then 2 goes to row 1
    ([5, 4, 3, 2], [["0"], ["1"]]),  # 3 fits nowhere (room 1 and 2): the batch closes there
    ([2, 4, 2, 2, 2], [["0", "1"], ["2", "3", "4"]]),  # row 0 is full after 2+4
    ([4, 2, 1, 1], [["0", "1"], ["2", "3"]]),
])
def test_packer_is_first_fit_in_stream_order(lengths, expected_rows):
    from sftprep.trainer.collate import next_batch

    examples = [ex(range(1, n + 1), 0, str(i)) for i, n in enumerate(lengths)]
    stream = ListStream(examples)
    batch = next_batch(stream, batch_size=2, seq_len=6, pack=True)
    per_row = [len(set(seg.tolist())) - int((ids != 0).sum() < 6)
               for seg, ids in zip(batch.segments, batch.input_ids)]
    names = iter(batch.example_ids)
    assert [[next(names) for _ in range(n)] for n in per_row] == expected_rows
    consumed = sum(len(r) for r in expected_rows)
    assert stream.index == consumed  # the example that did not fit was given back
    assert batch.num_tokens == sum(lengths[:consumed])

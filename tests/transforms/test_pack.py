"""Packing: every example in exactly one pack, no pack over N, columns that unpack exactly."""

from __future__ import annotations

import numpy as np
import pytest

from sftprep.transforms.pack import (
    IGNORE_INDEX, PACKERS, best_fit_decreasing, efficiency, pack_columns)
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from tests.conftest import read_records, spec_for


def _check_rows(rows, lengths, capacity):
    flat = np.concatenate(rows)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(int(lengths[row].sum()) <= capacity for row in rows)
    assert all((np.diff(row) > 0).all() for row in rows)  # ascending inside a pack
    assert [int(row[0]) for row in rows] == sorted(int(row[0]) for row in rows)


@pytest.mark.parametrize("packer", sorted(PACKERS))
@pytest.mark.parametrize("seed", range(5))
def test_random_lengths_pack_validly(packer, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 700, size=rng.integers(1, 3000))
    rows = PACKERS[packer](lengths, 1024)
    _check_rows(rows, lengths, 1024)
    # No two packs could be merged: every pair overflows (a property of both decreasing fits).
    sums = sorted(int(lengths[row].sum()) for row in rows)
    assert len(sums) < 2 or sums[0] + sums[1] > 1024


@pytest.fixture(scope="module")
def real_batch(runtime, token_info):
    settings = PrepareSettings(template=spec_for("chatml", token_info), max_length=1024)
    return prepare_batch(read_records("glaive_toolcall_en_demo.jsonl")
                         + read_records("alpaca_en_demo.jsonl", 300), settings, runtime).rows


@pytest.mark.parametrize("packer", sorted(PACKERS))
def test_real_examples_unpack_to_themselves(real_batch, packer):
    rows = real_batch
    lengths = np.diff(rows.offsets)
    packs = PACKERS[packer](lengths, 2048)
    _check_rows(packs, lengths, 2048)
    assert efficiency(lengths, len(packs), 2048) > 0.97
    packed = pack_columns(rows.input_ids, rows.labels, rows.offsets[:-1], lengths, packs)
    assert packed.offsets[-1] == rows.offsets[-1] == len(packed.input_ids)
    for p in range(len(packs)):
        tokens = slice(packed.offsets[p], packed.offsets[p + 1])
        ids, labels = packed.input_ids[tokens], packed.labels[tokens]
        positions = packed.position_ids[tokens]
        members = packed.order[packed.example_offsets[p]:packed.example_offsets[p + 1]]
        sizes = packed.seq_lengths[packed.example_offsets[p]:packed.example_offsets[p + 1]]
        assert int(sizes.sum()) == len(ids) <= 2048
        start = 0
        for k, (example, size) in enumerate(zip(members, sizes)):
            original = slice(rows.offsets[example], rows.offsets[example + 1])
            assert ids[start:start + size].tolist() == rows.input_ids[original].tolist()
            assert positions[start:start + size].tolist() == list(range(size))
            restored = labels[start:start + size].copy()
            if k:  # the first label after a boundary is never trained
                assert restored[0] == IGNORE_INDEX
                restored[0] = rows.labels[original][0]
            assert restored.tolist() == rows.labels[original].tolist()
            start += size


def test_packing_is_deterministic_and_refuses_what_does_not_fit():
    lengths = np.array([3, 9, 3, 5, 7, 1, 2, 8])
    first = [r.tolist() for r in best_fit_decreasing(lengths, 10)]
    assert first == [r.tolist() for r in best_fit_decreasing(lengths.copy(), 10)]
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing(np.array([4, 11]), 10)

"""`sftprep train` on a `sftprep run --pack-length` output: the per-token losses of stored packs
equal those of the same examples unpacked, the loss falls, and resume is exact."""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sftprep.cli import main
from sftprep.trainer import collate, data
from sftprep.trainer.collate import IGNORE_INDEX, pad_examples
from sftprep.trainer.model import TokenLoss, build_tiny_model
from tests.conftest import DATA
from tests.trainer.conftest import assert_resumed_like_uninterrupted, cut_dataset, summary
from tests.trainer.test_loss import tensors


def packed_run(out, pack_length):
    """The alpaca_data fixture's run, packed: same file, shards and split."""
    assert main(["run", "--input", str(DATA / "alpaca_en_demo.jsonl"), "--output", str(out),
                 "--pack-length", str(pack_length), "--validation-fraction", "0.05",
                 "--num-shards", "2", "--progress", "never"]) == 0
    return out


@pytest.fixture(scope="module")
def packed_256(tmp_path_factory):
    """Packs of the very examples alpaca_data holds (its --max-length is 256 too)."""
    return packed_run(tmp_path_factory.mktemp("packed256") / "out", 256)


@pytest.fixture(scope="module")
def packed_128(tmp_path_factory):
    return packed_run(tmp_path_factory.mktemp("packed128") / "out", 128)


def train(*args) -> int:
    return main(["train", *[str(a) for a in args]])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_stored_packs_give_the_losses_of_the_same_examples_unpacked(alpaca_data, packed_256,
                                                                    attention):
    """Through the trainer's own reading and batching: the first batch of the packed run, and
    each of its examples taken from the unpacked run and run alone."""
    by_id = {}
    unpacked = data.open_dataset(str(alpaca_data))
    for example in data.ExampleStream(data.list_blocks(unpacked.shards("train"), 1), seed=0,
                                      rank=0, world_size=1, shuffle=False, epochs=1,
                                      vocab_size=unpacked.vocab_size):
        by_id[example.example_id] = example
    packed = data.open_dataset(str(packed_256))

    def stream():
        return data.ExampleStream(data.list_blocks(packed.shards("train"), 1), seed=0, rank=0,
                                  world_size=1, shuffle=True, epochs=1,
                                  vocab_size=packed.vocab_size)

    peek = stream()
    first_two = [peek.next(), peek.next()]
    batching = stream()
    batch = collate.next_batch(batching, batch_size=2, seq_len=256, pack=False)
    assert batching.position == data.Position(0, 2)  # two stored packs, one per row
    assert batch.input_ids.shape == (2, 256) and len(batch.example_ids) >= 4
    tiny = build_tiny_model(packed.vocab_size, 256, seed=0).eval()
    tiny.set_attn_implementation(attention)
    module = TokenLoss(tiny)
    losses = module(**tensors(batch))
    targets = batch.labels[:, 1:] != IGNORE_INDEX
    owner = batch.segments[:, 1:][targets]
    row = np.broadcast_to(np.arange(2)[:, None], targets.shape)[targets]
    numbers = [(r, n) for r, pack in enumerate(first_two)
               for n in range(1, len(pack.members.example_ids) + 1)]
    assert batch.example_ids == [i for pack in first_two for i in pack.members.example_ids]
    assert len(numbers) == len(batch.example_ids)
    worst = 0.0
    for (r, number), example_id in zip(numbers, batch.example_ids):
        example = by_id[example_id]
        alone = module(**tensors(pad_examples([example], 256)))
        mine = losses[torch.from_numpy((row == r) & (owner == number))]
        assert len(mine) == len(alone) > 0
        worst = max(worst, float((mine - alone).abs().max()))
    assert worst < 1e-5, worst
    tiny.set_attn_implementation("sdpa")


def test_tiny_model_learns_from_a_packed_run(packed_128, tmp_path):
    out = tmp_path / "ckpt"
    assert train("--data", packed_128, "--output", out, "--model", "tiny", "--max-steps", 24,
                 "--seq-len", 128, "--batch-size", 1, "--lr", "1e-2", "--warmup-steps", 3,
                 "--log-every", 5, "--eval-every", 0, "--eval-batches", 2) == 0
    result = summary(out)
    losses = [loss for _, loss in result["train_loss"]]
    assert len(losses) == 24 and result["steps"] == 24
    assert 11.0 < losses[0] < 12.5
    assert statistics.median(losses[-6:]) < losses[0] - 2.0, losses
    assert result["val_loss"] < losses[0] - 1.5
    # Stored packs are nearly full: the padding the trainer adds is what the packer left.
    assert result["packing_efficiency"] > 0.9


def test_stop_and_resume_on_a_packed_run_matches_an_uninterrupted_run(packed_128, tmp_path):
    small = cut_dataset(packed_128, tmp_path / "small", 16, 4)
    assert pq.read_table(next((small / "train").glob("*.parquet"))).num_rows == 8
    args = ("--model", "tiny", "--max-steps", 6, "--seq-len", 128, "--batch-size", 1,
            "--grad-accum", 2, "--lr", "3e-3", "--warmup-steps", 2, "--eval-every", 0,
            "--eval-batches", 1, "--save-every", 0)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train("--data", small, "--output", whole, *args) == 0
    assert train("--data", small, "--output", parts, *args, "--stop-at", 3) == 0
    assert summary(parts)["steps"] == 3
    assert train("--data", small, "--output", parts, *args, "--resume") == 0
    assert_resumed_like_uninterrupted(whole, parts, steps=6)


def test_a_seq_len_shorter_than_the_packs_is_refused_in_one_line(packed_128, tmp_path, capsys):
    assert train("--data", packed_128, "--output", tmp_path / "ckpt", "--seq-len", 64,
                 "--max-steps", 1) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sftprep: error: --data {packed_128} holds rows packed to 128 tokens, longer than "
        "--seq-len 64; use --seq-len 128 or more"]

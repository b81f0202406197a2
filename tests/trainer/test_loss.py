"""The loss on real rows with the tiny model: which tokens it counts, and packing that keeps
examples apart (attention and targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sftprep.trainer import data
from sftprep.trainer.collate import IGNORE_INDEX, pack_rows, pad_examples
from sftprep.trainer.model import TokenLoss, build_tiny_model


@pytest.fixture(scope="module")
def rows(alpaca_data):
    dataset = data.open_dataset(str(alpaca_data))
    blocks = data.list_blocks(dataset.shards("train"), 1)
    stream = data.ExampleStream(blocks, seed=0, rank=0, world_size=1, shuffle=True, epochs=1,
                                vocab_size=dataset.vocab_size)
    # Short examples with a real prompt, so four fit in one 256-token row.
    picked = [e for e in stream if 20 <= len(e.input_ids) <= 60
              and (e.labels == IGNORE_INDEX).sum() >= 8][:4]
    assert len(picked) == 4
    return dataset, picked


@pytest.fixture(scope="module")
def tiny(rows):
    return build_tiny_model(rows[0].vocab_size, 256, seed=0).eval()


def tensors(batch):
    out = {"input_ids": batch.input_ids, "labels": batch.labels,
           "position_ids": batch.position_ids}
    if batch.attention_mask is not None:
        out["attention_mask"] = batch.attention_mask
    if batch.segments is not None:
        out["segments"] = batch.segments
    return {k: torch.tensor(v) for k, v in out.items()}  # copies: the tests edit them


@torch.no_grad()
def test_loss_is_the_shifted_cross_entropy_over_trained_tokens(rows, tiny):
    batch = pad_examples(rows[1][:2], 256)
    losses = TokenLoss(tiny)(**tensors(batch))
    assert len(losses) == batch.num_trained == sum(
        int((e.labels[1:] != IGNORE_INDEX).sum()) for e in rows[1][:2])
    logits = tiny(input_ids=torch.from_numpy(batch.input_ids),
                  attention_mask=torch.from_numpy(batch.attention_mask)).logits
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                torch.from_numpy(batch.labels[:, 1:]).reshape(-1),
                                ignore_index=IGNORE_INDEX)
    assert abs(float(losses.mean()) - float(reference)) < 1e-5


@torch.no_grad()
def test_masked_labels_are_not_trained_and_masked_inputs_do_not_change_what_counts(rows, tiny):
    module = TokenLoss(tiny)
    example = rows[1][0]
    prompt = np.flatnonzero(example.labels == IGNORE_INDEX)
    batch = pad_examples([example], 256)
    base = module(**tensors(batch))

    # The prompt's labels set to the real ids: more tokens counted, another loss.
    unmasked = tensors(batch)
    unmasked["labels"][0, prompt] = unmasked["input_ids"][0, prompt]
    more = module(**unmasked)
    assert len(more) == len(base) + len(prompt[prompt > 0])
    assert abs(float(more.mean()) - float(base.mean())) > 1e-3

    # Other token ids where the labels are -100: the same positions are counted, and the
    # trained tokens' own targets are unchanged.
    changed = tensors(batch)
    changed["input_ids"][0, prompt[1:]] = (changed["input_ids"][0, prompt[1:]] + 1000) % 129000
    other = module(**changed)
    assert len(other) == len(base)
    assert not torch.equal(other, base)  # the context changed, so the predictions did

    # Labels of -100 at any value of the input: never a target.
    nothing = tensors(batch)
    nothing["labels"][:] = IGNORE_INDEX
    assert len(module(**nothing)) == 0


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_packed_examples_match_the_same_examples_run_one_by_one(rows, tiny, attention):
    tiny.set_attn_implementation(attention)
    module = TokenLoss(tiny)
    examples = rows[1]
    batch = pack_rows([examples], seq_len=256)
    packed = module(**tensors(batch))
    # Each loss belongs to the example whose token is the target.
    owner = batch.segments[:, 1:][batch.labels[:, 1:] != IGNORE_INDEX]
    worst = 0.0
    for number, example in enumerate(examples, start=1):
        alone = module(**tensors(pad_examples([example], 256)))
        mine = packed[torch.from_numpy(owner == number)]
        assert len(mine) == len(alone) > 0
        worst = max(worst, float((mine - alone).abs().max()))
    assert worst < 1e-5, worst

    # The same row with one causal mask over all of it: later examples now see earlier ones
    # and the losses move, which is what the block mask prevents.
    leaky = tensors(batch)
    leaky["segments"][:] = 1
    spilled = module(**leaky)
    assert float((spilled - packed).abs().max()) > 1e-3
    tiny.set_attn_implementation("sdpa")

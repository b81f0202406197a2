"""The optimizer step's parts: the lr schedule, gradient accumulation over micro-batches, and
clipping; and the trainer modules' doctests."""

from __future__ import annotations

import copy
import doctest
import math

import numpy as np
import pytest
import torch

from sftprep.trainer import args, collate, data, distributed, loop, model

CPU = distributed.Context(rank=0, world_size=1, device=torch.device("cpu"))


def config(**overrides) -> args.TrainConfig:
    return args.TrainConfig(data="unused", output="unused", **overrides)


@pytest.mark.parametrize("module", [loop, data, collate, model, args])
def test_doctests_pass(module):
    result = doctest.testmod(module)
    assert result.failed == 0


def test_lr_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    def factor(step):
        return loop.lr_factor(step, warmup_steps=4, max_steps=24, min_ratio=0.1)

    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warmup
    assert factor(4) == 1.0  # the peak, where the cosine starts
    assert factor(14) == pytest.approx(0.55)  # halfway down: (1 + 0.1) / 2
    assert factor(24) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)  # the floor
    after = [factor(s) for s in range(4, 25)]
    assert all(a > b for a, b in zip(after, after[1:]))


def test_the_optimizer_steps_at_the_scheduled_lr():
    layer = torch.nn.Linear(3, 2)
    optimizer, scheduler = loop.build_optimizer(
        layer, config(lr=2e-3, warmup_steps=2, max_steps=10, min_lr_ratio=0.25))
    used = []
    for _ in range(12):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert all(a == b for a, b in used)  # decay and no-decay groups share the schedule
    lrs = [a for a, _ in used]
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 2e-3])
    assert lrs[6] == pytest.approx(2e-3 * (0.25 + 0.75 * 0.5))  # the cosine's midpoint
    assert lrs[9] == pytest.approx(2e-3 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * 7 / 8))))
    assert lrs[10:] == pytest.approx([5e-4, 5e-4])  # past --max-steps: the floor
    # Weight decay only on matrices (the weight), not on the bias.
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]


def example(name, length, trained, seed):
    ids = np.random.default_rng(seed).integers(1, 64, length).astype(np.int32)
    labels = np.where(np.arange(length) >= length - trained, ids, collate.IGNORE_INDEX)
    return data.TrainingSequence(ids, labels.astype(np.int32), name)


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_two_micro_batches_give_the_gradient_and_step_of_one_batch_of_both():
    # Different lengths and trained-token counts: the step's mean is over all 3 + 11 tokens,
    # not the mean of the two micro-batches' means.
    short, long = example("a", 6, 3, 1), example("b", 14, 11, 2)
    total = 3 + 11
    # float64, so that Adam's first step (about lr * sign(grad)) does not blow float32 noise in
    # gradients near its eps up into visible differences.
    base = loop.TokenLoss(model.build_tiny_model(64, 32, seed=0)).double()
    accumulated, whole = copy.deepcopy(base), copy.deepcopy(base)

    micro = [collate.pad_examples([short], 32), collate.pad_examples([long], 32)]
    one = [collate.pad_examples([short, long], 32)]
    assert sum(b.num_trained for b in micro) == one[0].num_trained == total
    loss_a = loop.accumulate_gradients(accumulated, micro, total, CPU, None)
    loss_b = loop.accumulate_gradients(whole, one, total, CPU, None)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    a, b = grads(accumulated), grads(whole)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-7, atol=1e-12, msg=name)
    # ... and that is the gradient of the mean token loss of both examples, done directly.
    direct = copy.deepcopy(base)
    direct(**loop._to_device(one[0], CPU.device)).mean().backward()
    for name, grad in grads(direct).items():
        torch.testing.assert_close(a[name], grad, rtol=1e-7, atol=1e-12, msg=name)
    # A mean per micro-batch would weigh the short example's 3 tokens like the long one's 11.
    naive = copy.deepcopy(base)
    for batch in micro:
        (naive(**loop._to_device(batch, CPU.device)).mean() / 2).backward()
    assert not torch.allclose(grads(naive)["model.model.norm.weight"],
                              a["model.model.norm.weight"], rtol=1e-3)

    # One optimizer step from the same weights lands on the same weights.
    for module in (accumulated, whole):
        optimizer, _ = loop.build_optimizer(module, config(lr=1e-2, warmup_steps=0))
        optimizer.step()
    after_a, after_b = accumulated.state_dict(), whole.state_dict()
    assert any(not torch.equal(after_a[n], base.state_dict()[n]) for n in after_a)
    for name in after_a:
        torch.testing.assert_close(after_a[name], after_b[name], rtol=0, atol=1e-10, msg=name)


def set_grads(module, value):
    for p in module.parameters():
        p.grad = torch.full_like(p, value)


def test_clipping_caps_the_gradient_norm_and_reports_it_before():
    layer = torch.nn.Linear(4, 3)  # 12 + 3 parameters

    def norm():
        return float(torch.cat([p.grad.flatten() for p in layer.parameters()]).norm())

    set_grads(layer, 2.0)
    assert loop.clip_gradients(layer, 1.0) == pytest.approx(2.0 * math.sqrt(15))
    assert norm() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(layer.weight.grad, layer.bias.grad[0])  # scaled, direction kept

    set_grads(layer, 0.1)  # norm 0.39 < 1: untouched
    assert loop.clip_gradients(layer, 1.0) == pytest.approx(0.1 * math.sqrt(15))
    assert norm() == pytest.approx(0.1 * math.sqrt(15))

    set_grads(layer, 2.0)  # --clip 0: off
    assert math.isnan(loop.clip_gradients(layer, 0.0))
    assert norm() == pytest.approx(2.0 * math.sqrt(15))

"""Mixture planning: weights and shares become copies per example, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from sftprep.transforms.mix import Request, Totals, draw, plan_mixture


def _examples(prefix: str, count: int, tokens: int = 1):
    """(example id, draw, trained tokens) for `count` examples."""
    rng = np.random.default_rng(len(prefix) + count)
    lengths = rng.integers(1, 3 * tokens + 1, size=count) if tokens > 1 else np.ones(count, int)
    ids = [f"{prefix}{i:06d}" for i in range(count)]
    return [(i, draw(i, 0), int(n)) for i, n in zip(ids, lengths)]


def _written(plan, examples):
    copies = [plan.copies(d) for _, d, _ in examples]
    return sum(copies), sum(c * n for c, (_, _, n) in zip(copies, examples))


@pytest.mark.parametrize("weight,expected", [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (1.5, 1.5),
                                             (0.0, 0.0)])
def test_weights_multiply_rows(weight, expected):
    examples = _examples("w", 4000)
    totals = {"a": Totals.of((d, 1) for _, d, _ in examples)}
    plan = plan_mixture({"a": Request(weight=weight)}, totals)["a"]
    rows, _ = _written(plan, examples)
    assert rows == pytest.approx(expected * 4000, abs=2)
    assert all(plan.copies(d) in (int(weight), int(weight) + 1) for _, d, _ in examples)


def test_shares_by_trained_tokens_hold_within_a_tenth_of_a_point():
    sources = {"short": _examples("s", 3000, tokens=20), "long": _examples("l", 800, tokens=400)}
    totals = {name: Totals.of((d, n) for _, d, n in ex) for name, ex in sources.items()}
    plans = plan_mixture({"short": Request(share=0.3), "long": Request(share=0.7)}, totals)
    tokens = {name: _written(plans[name], ex)[1] for name, ex in sources.items()}
    achieved = tokens["short"] / sum(tokens.values())
    assert achieved == pytest.approx(0.3, abs=0.001)
    # Without `total`, the source that runs out first is used whole and nothing is upsampled.
    assert max(p.multiplier for p in plans.values()) == pytest.approx(1.0)
    assert all(p.base <= 1 for p in plans.values())


def test_total_upsamples_and_max_repeat_caps():
    examples = _examples("t", 1000)
    totals = {"a": Totals.of((d, 1) for _, d, _ in examples)}
    plan = plan_mixture({"a": Request(share=1.0)}, totals, total=2500)["a"]
    assert _written(plan, examples)[0] == pytest.approx(2500, abs=2)
    capped = plan_mixture({"a": Request(share=1.0)}, totals, total=9000, max_repeat=4)["a"]
    assert capped.capped and _written(capped, examples)[0] == 4000


def test_draws_are_stable_and_uniform():
    values = np.array([draw(f"id{i}", 7) for i in range(20000)])
    assert draw("id5", 7) == values[5] and draw("id5", 8) != values[5]
    assert np.histogram(values, bins=10, range=(0, 1))[0].min() > 1800


@pytest.mark.parametrize("kwargs", [{}, {"weight": 1, "share": 0.5}, {"weight": -1},
                                    {"share": 1.5}, {"weight": float("nan")}])
def test_bad_requests_are_refused(kwargs):
    with pytest.raises(ValueError):
        Request(**kwargs)


def test_per_source_arrays_give_each_examples_own_copies_and_buckets():
    """Mixing.copies and batch_totals work per source with numpy; they equal the per-example
    definitions (SourcePlan.copies of its draw; Totals.of the source's (draw, units))."""
    from sftprep.transforms.mix import Mixing, batch_totals, bucket_of, draws

    ids = [f"ex{i:05d}" for i in range(3000)]
    tags = [("a/x.jsonl", "b/y.jsonl", "a/z.jsonl", "outside/w.jsonl")[i % 4] for i in range(3000)]
    tokens = np.arange(3000) % 37
    values = draws(ids, 11)
    assert values.tolist() == [draw(i, 11) for i in ids]
    assert [bucket_of(v) for v in values] == [min(int(v * 65536), 65535) for v in values]
    mixing = Mixing((("a", Request(weight=1.4)), ("b", Request(weight=0.3))), "rows", 11)
    totals = {n: Totals.of((draw(i, 11), 1) for i, t in zip(ids, tags) if t.startswith(n + "/"))
              for n in ("a", "b")}
    plan = mixing.plan({n: t.units for n, t in totals.items()})
    copies = mixing.copies(plan, ids, tags)
    assert copies.tolist() == [plan[t.split("/")[0]].copies(draw(i, 11)) if t[0] in "ab" else 1
                               for i, t in zip(ids, tags)]
    assert set(copies.tolist()) == {0, 1, 2}
    for unit in ("rows", "trained_tokens"):
        sparse = batch_totals(ids, tags, tokens, 11, unit)
        assert list(sparse) == ["a", "b", "outside"]  # in order of first appearance
        for name, (buckets, units) in sparse.items():
            expected = Totals.of((draw(i, 11), 1 if unit == "rows" else int(n))
                                 for i, t, n in zip(ids, tags, tokens)
                                 if t.startswith(name + "/")).units
            dense = np.zeros_like(expected)
            dense[buckets] = units
            assert np.array_equal(dense, expected)

"""Mixing sources: how many copies of each example a mixture writes, decided by a seeded hash.

A source is mixed by exactly one of
- `weight` W: a multiplier on its rows. Every example gets floor(W) copies, and a deterministic
  share W - floor(W) of them one more (0.5 keeps half, 2 writes each twice, 1.5 writes each once
  and half of them twice);
- `share` S: its fraction of the output, in the run's unit (`rows` or `trained_tokens`). With
  `total` the output has that many units; without it, the largest mixture that needs no
  upsampling (the source that runs out first sets the size).
A share becomes a multiplier W = S x total / (the source's units), then is handled as a weight.
`max_repeat` caps the copies of one example (the achieved share then falls short, and says so).

Which examples get the extra copy is decided by `draw(example_id, seed)`, uniform in [0, 1):
examples whose draw falls below a per-source threshold. The threshold is chosen from a
histogram of the source's units over draw buckets (`DRAW_BUCKETS`), so the fraction holds in
the mixture's unit (rows or trained tokens) to within one bucket's mass, and the histogram is
all the pipeline has to gather in its one extra pass.

>>> plan = plan_mixture({"a": Request(weight=1.5)}, {"a": Totals.of([(0.1, 1), (0.7, 1)])})
>>> [plan["a"].copies(d) for d in (0.1, 0.7)]
[2, 1]
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

MIX_BY = ("trained_tokens", "rows")
DRAW_BUCKETS = 1 << 16


def draw(example_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the example id and the run's seed (never `hash()`).

    >>> draw("0123456789abcdef", 0) == draw("0123456789abcdef", 0)
    True
    """
    digest = hashlib.sha256(f"mix:{seed}:{example_id}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def bucket_of(value: float) -> int:
    return min(int(value * DRAW_BUCKETS), DRAW_BUCKETS - 1)


@dataclasses.dataclass(frozen=True)
class Request:
    """What the config asks of one source: exactly one of a weight or a share."""

    weight: Optional[float] = None
    share: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.weight is None) == (self.share is None):
            raise ValueError("give a source exactly one of weight or share")
        value = self.weight if self.weight is not None else self.share
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"weight and share must be finite numbers >= 0, got {value!r}")
        if self.share is not None and self.share > 1:
            raise ValueError(f"a share is a fraction of the output, at most 1, got {self.share}")


@dataclasses.dataclass(frozen=True)
class Totals:
    """A source's units (rows or trained tokens) by draw bucket, summed over its examples."""

    units: np.ndarray  # float64, DRAW_BUCKETS long

    @classmethod
    def of(cls, draws_and_units: Iterable[Tuple[float, float]]) -> "Totals":
        units = np.zeros(DRAW_BUCKETS, dtype=np.float64)
        for value, amount in draws_and_units:
            units[bucket_of(value)] += amount
        return cls(units)

    @property
    def total(self) -> float:
        return float(self.units.sum())


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """Copies for one source: `base` for every example, one more below `threshold`."""

    multiplier: float  # what was asked, after max_repeat
    base: int
    threshold: float  # a draw in [0, 1]; examples with a draw below it get base + 1 copies
    capped: bool = False  # max_repeat kept the multiplier below what the share needed

    def copies(self, value: float) -> int:
        return self.base + (1 if value < self.threshold else 0)


def plan_mixture(requests: Mapping[str, Request], totals: Mapping[str, Totals],
                 total: Optional[float] = None, max_repeat: Optional[int] = None
                 ) -> Dict[str, SourcePlan]:
    """Each source's plan. Shares are normalized only in the sense that they must sum to 1
    (checked where the config is read); `total` is in the mixture's unit."""
    multipliers: Dict[str, float] = {}
    shares = {name: r.share for name, r in requests.items() if r.share is not None}
    if shares:
        size = total if total is not None else _largest_without_upsampling(shares, totals)
    for name, request in requests.items():
        if request.weight is not None:
            multipliers[name] = float(request.weight)
        else:
            units = totals[name].total if name in totals else 0.0
            multipliers[name] = (request.share * size / units) if units > 0 else 0.0
    return {name: _plan(multipliers[name], totals.get(name), max_repeat)
            for name in requests}


def _largest_without_upsampling(shares: Mapping[str, float],
                                totals: Mapping[str, Totals]) -> float:
    """The biggest output in which no source with a share needs more than it has."""
    limits = [totals[name].total / share for name, share in shares.items()
              if share > 0 and name in totals]
    return min(limits) if limits else 0.0


def _plan(multiplier: float, totals: Optional[Totals], max_repeat: Optional[int]) -> SourcePlan:
    capped = max_repeat is not None and multiplier > max_repeat
    if capped:
        multiplier = float(max_repeat)
    base = int(math.floor(multiplier))
    fraction = multiplier - base
    return SourcePlan(multiplier, base, _threshold(fraction, totals), capped)


def _threshold(fraction: float, totals: Optional[Totals]) -> float:
    """The draw below which examples carry `fraction` of the source's units."""
    if fraction <= 0 or totals is None or totals.total <= 0:
        return 0.0
    cumulative = np.cumsum(totals.units)
    goal = fraction * cumulative[-1]
    index = int(np.searchsorted(cumulative, goal, side="left"))
    # Take the bucket whose end lands nearest the goal.
    if index > 0 and goal - cumulative[index - 1] < cumulative[index] - goal:
        index -= 1
    return min(1.0, (index + 1) / DRAW_BUCKETS)


def source_name(tag: str) -> str:
    """The mixture source a record's `source` column belongs to (`NAME/FILE` -> NAME)."""
    return tag.split("/", 1)[0]


SparseTotals = Dict[str, Tuple[np.ndarray, np.ndarray]]  # name -> (buckets, units there)


def draws(example_ids: Sequence[str], seed: int) -> np.ndarray:
    """`draw` of each example id, as float64 (the same numbers, one hash each)."""
    return np.fromiter((draw(i, seed) for i in example_ids), np.float64, len(example_ids))


def buckets_of(values: np.ndarray) -> np.ndarray:
    """`bucket_of` of each draw."""
    return np.minimum((np.asarray(values) * DRAW_BUCKETS).astype(np.int64), DRAW_BUCKETS - 1)


def source_codes(tags: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Each row's index into the distinct tags, and those tags in order of first appearance.

    >>> codes, distinct = source_codes(["b/x", "a/y", "b/x"])
    >>> codes.tolist(), distinct
    ([0, 1, 0], ['b/x', 'a/y'])
    """
    index: Dict[str, int] = {}
    codes = np.fromiter((index.setdefault(t, len(index)) for t in tags), np.int64, len(tags))
    return codes, list(index)


def batch_totals(example_ids: Sequence[str], tags: Sequence[str], trained_tokens: np.ndarray,
                 seed: int, unit: str) -> SparseTotals:
    """One batch's units by source and draw bucket, sparse (only the buckets it touches)."""
    codes, distinct = source_codes(tags)
    return coded_totals(draws(example_ids, seed), codes, distinct, trained_tokens, unit)


def coded_totals(values: np.ndarray, codes: np.ndarray, tags: Sequence[str],
                 trained_tokens: np.ndarray, unit: str) -> SparseTotals:
    """`batch_totals` from each row's draw and its index into `tags` (distinct source tags)."""
    by_tag, names = source_codes([source_name(t) for t in tags])  # each tag's source name
    row_names = by_tag[codes]
    buckets = buckets_of(values)
    units = np.ones(len(codes)) if unit == "rows" else \
        np.asarray(trained_tokens).astype(np.float64)
    out: SparseTotals = {}
    for code in _first_appearance(row_names):
        rows = row_names == code
        dense = np.bincount(buckets[rows], weights=units[rows], minlength=DRAW_BUCKETS)
        where = np.flatnonzero(dense)
        out[names[code]] = (where.astype(np.int32), dense[where])
    return out


def _first_appearance(codes: np.ndarray) -> List[int]:
    """The distinct values of `codes` in the order they first appear."""
    present, first = np.unique(codes, return_index=True)
    return present[np.argsort(first)].tolist()


def add_totals(into: Dict[str, np.ndarray], part: SparseTotals) -> Dict[str, np.ndarray]:
    """Sum a sparse part into dense per-source histograms (in place; returned)."""
    for name, (buckets, units) in part.items():
        dense = into.setdefault(name, np.zeros(DRAW_BUCKETS, np.float64))
        np.add.at(dense, buckets, units)
    return into


@dataclasses.dataclass(frozen=True)
class Mixing:
    """What the shard writers need to apply a mixture (small, picklable)."""

    requests: Tuple[Tuple[str, Request], ...]
    unit: str  # what the totals count: rows | trained_tokens
    seed: int = 0
    total: Optional[float] = None
    max_repeat: Optional[int] = None
    order: Tuple[str, ...] = ()  # source names in `sources` order: the first keeps a duplicate

    def plan(self, dense: Mapping[str, np.ndarray]) -> Dict[str, SourcePlan]:
        return plan_mixture(dict(self.requests), {n: Totals(u) for n, u in dense.items()},
                            self.total, self.max_repeat)

    def copies(self, plan: Mapping[str, SourcePlan], example_ids: Sequence[str],
               tags: Sequence[str]) -> np.ndarray:
        """Copies of each row (0: sampled out); a source outside the plan keeps one."""
        codes, distinct = source_codes(tags)
        return self.coded_copies(plan, draws(example_ids, self.seed), codes, distinct)

    def coded_copies(self, plan: Mapping[str, SourcePlan], values: np.ndarray,
                     codes: np.ndarray, tags: Sequence[str]) -> np.ndarray:
        """`copies` from each row's draw and its index into `tags` (distinct source tags):
        the source's base, plus one where the draw falls below its threshold."""
        plans = [plan.get(source_name(t)) for t in tags]
        base = np.array([p.base if p else 1 for p in plans], np.int64)
        threshold = np.array([p.threshold if p else 0.0 for p in plans], np.float64)
        if not len(codes):
            return np.zeros(0, np.int64)
        return base[codes] + (np.asarray(values) < threshold[codes])

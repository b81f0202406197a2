"""stats.json's document: histogram buckets in numeric order, bytes independent of merge order."""

from __future__ import annotations

import json

from sftprep.transforms import stats as stats_lib


def _partial(source: str, length: int) -> dict:
    partial: dict = {}
    stats_lib.bump(partial, "read", source)
    stats_lib.bump(partial, "written", "train", source)
    stats_lib.bump(partial, "lengths", "train", str(length))
    stats_lib.bump(partial, "trainable_lengths", "train", str(length // 2))
    stats_lib.bump(partial, "tokens", "train", "total", by=length)
    return partial


def test_histograms_are_keyed_in_numeric_order():
    parts = [_partial("b.jsonl", n) for n in (100, 9, 10, 2)] + [_partial("a.jsonl", 1000)]
    document = json.loads(stats_lib.to_json(stats_lib.summarize(stats_lib.merge(parts))))
    assert list(document["length_histogram"]["train"]) == ["2", "9", "10", "100", "1000"]
    assert list(document["trainable_length_histogram"]["train"]) == ["1", "4", "5", "50", "500"]
    assert list(document["per_source"]) == ["a.jsonl", "b.jsonl"]


def test_bytes_do_not_depend_on_the_order_partials_arrive_in():
    parts = [_partial(f"{name}.jsonl", n) for name, n in (("x", 5), ("y", 12), ("z", 7))]
    forward = stats_lib.to_json(stats_lib.summarize(stats_lib.merge(parts)))
    backward = stats_lib.to_json(stats_lib.summarize(stats_lib.merge(parts[::-1])))
    assert forward == backward

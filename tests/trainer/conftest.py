"""Datasets for the trainer tests: the pipeline run once on a real file, and a small cut of it."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from tests.conftest import DATA


@pytest.fixture(scope="session")
def alpaca_data(tmp_path_factory):
    """`sftprep run` on alpaca_en_demo.jsonl: about 940 train and 40 validation rows."""
    from sftprep.cli import main

    out = tmp_path_factory.mktemp("alpaca") / "out"
    code = main(["run", "--input", str(DATA / "alpaca_en_demo.jsonl"), "--output", str(out),
                 "--max-length", "256", "--validation-fraction", "0.05", "--num-shards", "2"])
    assert code == 0
    return out


def cut_dataset(source, target, train_rows, validation_rows):
    """A copy of a pipeline output with only the first rows of each shard (same layout,
    manifest and tokenizer), so that trainer runs stay short."""
    shutil.copytree(source / "tokenizer", target / "tokenizer")
    for name in ("manifest.json", "stats.json"):
        shutil.copy(source / name, target / name)
    for split, rows in (("train", train_rows), ("validation", validation_rows)):
        shards = sorted((source / split).glob("*.parquet"))
        (target / split).mkdir()
        for shard in shards:
            table = pq.read_table(shard).slice(0, rows // len(shards))
            pq.write_table(table, target / split / shard.name)
    return target


@pytest.fixture(scope="session")
def small_data(alpaca_data, tmp_path_factory):
    """16 train rows (8 per shard) and 6 validation rows of the alpaca output."""
    return cut_dataset(alpaca_data, tmp_path_factory.mktemp("small") / "out", 16, 6)


def summary(output):
    return json.loads((output / "train_summary.json").read_text())


def assert_resumed_like_uninterrupted(whole, parts, steps: int) -> None:
    """The run stopped and resumed in `parts` logged every step once, with the losses of the
    uninterrupted run in `whole`."""
    uninterrupted, resumed = summary(whole)["train_loss"], summary(parts)["train_loss"]
    assert [s for s, _ in resumed] == list(range(1, steps + 1))
    for (step, a), (_, b) in zip(uninterrupted, resumed):
        assert abs(a - b) <= 1e-6, (step, a, b)
    assert summary(parts)["val_loss"] == pytest.approx(summary(whole)["val_loss"], abs=1e-6)

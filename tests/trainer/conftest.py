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

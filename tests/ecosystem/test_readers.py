"""The output read by other tools: Hugging Face datasets, pandas, polars and DuckDB agree with
stats.json and with each other, row for row."""

from __future__ import annotations

import json
import pathlib

import pyarrow.parquet as pq
import pytest

from sftprep import ecosystem


@pytest.fixture(scope="module")
def root(prepared):
    return pathlib.Path(ecosystem.data_dir(str(prepared)))


@pytest.fixture(scope="module")
def stats(root):
    return json.loads((root / "stats.json").read_text())


@pytest.fixture(scope="module")
def reference(root):
    """example_id -> (input_ids, labels) per split, read with pyarrow."""
    out = {}
    for split in ("train", "validation"):
        table = pq.read_table(root / split, columns=["example_id", "input_ids", "labels"])
        out[split] = {row["example_id"]: (row["input_ids"], row["labels"])
                      for row in table.to_pylist()}
    return out


def test_data_dir_and_files_follow_latest(prepared, root, stats):
    latest = json.loads((prepared / "LATEST").read_text())
    assert root == prepared / latest["path"] and root.parent.name == "runs"
    files = ecosystem.data_files(str(prepared))
    assert files == {split: sorted(str(p) for p in (root / split).glob("*.parquet"))
                     for split in ("train", "validation")}
    assert len(files["train"]) == 2 and len(files["validation"]) == 1
    assert pathlib.Path(ecosystem.tokenizer_dir(str(prepared))) == root / "tokenizer"
    assert stats["rows_by_split"]["train"] > 150 and stats["rows_by_split"]["validation"] > 10


@pytest.mark.parametrize("how", ["data_dir", "data_files"])
def test_hf_datasets(prepared, root, stats, reference, how):
    import datasets

    if how == "data_dir":
        data = datasets.load_dataset("parquet", data_dir=str(root))
    else:
        data = datasets.load_dataset("parquet", data_files=ecosystem.data_files(str(prepared)))
    assert set(data) == {"train", "validation"}
    assert data["train"].features == datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "num_tokens": datasets.Value("int32"),
        "num_trainable_tokens": datasets.Value("int32"),
        "example_id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "source_line": datasets.Value("int64"),
        "truncated": datasets.Value("bool"),
    })
    for split in ("train", "validation"):
        assert data[split].num_rows == stats["rows_by_split"][split]
        assert sum(data[split]["num_tokens"]) == stats["tokens"][split]["total"]
        assert sum(data[split]["num_trainable_tokens"]) == stats["tokens"][split]["trainable"]
        rows = {r["example_id"]: (r["input_ids"], r["labels"]) for r in data[split]}
        assert rows == reference[split]


def test_pandas_reads_a_split_folder(root, stats, reference):
    import pandas as pd

    frame = pd.read_parquet(root / "train")
    assert len(frame) == stats["rows_by_split"]["train"]
    assert str(frame["num_tokens"].dtype) == "int32" and str(frame["truncated"].dtype) == "bool"
    assert frame["input_ids"].iloc[0].dtype.name == "int32"
    assert int(frame["num_trainable_tokens"].sum()) == stats["tokens"]["train"]["trainable"]
    for example_id, ids, labels in frame[["example_id", "input_ids", "labels"]].itertuples(
            index=False):
        assert (ids.tolist(), labels.tolist()) == reference["train"][example_id]


def test_polars_read_and_scan_the_glob(root, stats, reference):
    import polars as pl

    pattern = str(root / "train" / "*.parquet")
    frame = pl.read_parquet(pattern)
    assert frame.schema["input_ids"] == pl.List(pl.Int32)
    assert frame.schema["labels"] == pl.List(pl.Int32)
    assert frame.schema["num_tokens"] == pl.Int32 and frame.schema["source_line"] == pl.Int64
    assert frame.height == stats["rows_by_split"]["train"]
    assert {r["example_id"]: (r["input_ids"], r["labels"]) for r in frame.iter_rows(named=True)} \
        == reference["train"]
    totals = pl.scan_parquet(pattern).select(
        pl.len(), pl.col("num_tokens").sum(), pl.col("num_trainable_tokens").sum()).collect()
    assert totals.row(0) == (stats["rows_by_split"]["train"], stats["tokens"]["train"]["total"],
                             stats["tokens"]["train"]["trainable"])
    # the trained-token count recomputed from the labels themselves
    recount = pl.scan_parquet(pattern).select(
        (pl.col("labels").list.eval(pl.element() != -100).list.sum()).sum()).collect().item()
    assert recount == stats["tokens"]["train"]["trainable"]


def test_duckdb_totals_match_stats(root, stats):
    import duckdb

    for split in ("train", "validation"):
        pattern = str(root / split / "*.parquet")
        rows, tokens, trainable = duckdb.sql(
            f"SELECT count(*), sum(num_tokens), sum(num_trainable_tokens) "
            f"FROM read_parquet('{pattern}')").fetchall()[0]
        assert (rows, tokens, trainable) == (stats["rows_by_split"][split],
                                             stats["tokens"][split]["total"],
                                             stats["tokens"][split]["trainable"])
    truncated = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/*/*.parquet') WHERE truncated").fetchall()[0][0]
    assert truncated == stats["rows_truncated"]
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{root}/train/*.parquet')")
    types = {name: kind for name, kind, *_ in described.fetchall()}
    assert types["input_ids"] == "INTEGER[]" and types["labels"] == "INTEGER[]"
    assert types["num_tokens"] == "INTEGER" and types["source_line"] == "BIGINT"

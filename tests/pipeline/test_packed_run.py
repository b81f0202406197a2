"""`sftprep run --pack-length N` on every bundled file: unpacking the packs gives exactly the
examples of the same run without packing, and the packs follow the packed schema's rules."""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftprep.dataset import IGNORE_INDEX, OUTPUT_SCHEMA, PACKED_SCHEMA
from sftprep.pipeline.run import main
from sftprep.pipeline.write import encode_packed
from tests.conftest import DATA

PACK = 512
BUNDLED = sorted(p.name for p in DATA.glob("*.jsonl"))
# gsm8k's fields are question/answer; the other files have neither, so the map is inert there.
COMMON = ["--input", str(DATA / "*.jsonl"), "--map", "prompt=question",
          "--map", "completion=answer", "--validation-fraction", "0.1", "--num-shards", "2",
          "--progress", "never"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("packed")
    plain, packed = base / "plain", base / "packed"
    assert main(COMMON + ["--output", str(plain), "--max-length", str(PACK)]) == 0
    assert main(COMMON + ["--output", str(packed), "--pack-length", str(PACK)]) == 0
    return plain, packed


def shards(out: pathlib.Path, split: str):
    return sorted((out / split).glob("*.parquet"))


def unpacked(row):
    """The examples of one packed row, with the first label of each restored from input_ids
    where the unpacked run has it: the unpacked first label is never a target, so any value
    would do; the pipeline writes -100 for it too, which this checks."""
    out, cursor = [], 0
    for index, length in enumerate(row["seq_lengths"]):
        ids = row["input_ids"][cursor:cursor + length]
        labels = list(row["labels"][cursor:cursor + length])
        out.append((row["example_ids"][index], row["sources"][index],
                    row["source_lines"][index], row["truncated"][index], tuple(ids),
                    tuple(labels)))
        cursor += length
    return out


@pytest.mark.parametrize("split", ["train", "validation"])
def test_unpacking_gives_exactly_the_unpacked_runs_examples(runs, split):
    plain, packed = runs
    expected = sorted((r["example_id"], r["source"], r["source_line"], r["truncated"],
                       tuple(r["input_ids"]), tuple(r["labels"]))
                      for path in shards(plain, split) for r in pq.read_table(path).to_pylist())
    got = sorted(example for path in shards(packed, split)
                 for row in pq.read_table(path).to_pylist() for example in unpacked(row))
    assert len(got) == len(expected) > 0
    # Every example's first label is -100 in both runs (nothing precedes it / a boundary).
    assert all(e[5][0] == IGNORE_INDEX for e in expected + got)
    assert got == expected
    assert {e[1] for e in got} == set(BUNDLED) if split == "train" else len({e[1] for e in got}) > 1


def test_packed_rows_follow_the_schema_rules(runs):
    _, packed = runs
    for split in ("train", "validation"):
        for path in shards(packed, split):
            table = pq.read_table(path)
            assert table.schema.remove_metadata() == PACKED_SCHEMA
            firsts = []
            for row in table.to_pylist():
                lengths = row["seq_lengths"]
                assert 0 < row["num_tokens"] == sum(lengths) == len(row["input_ids"]) <= PACK
                assert len(row["labels"]) == len(row["position_ids"]) == row["num_tokens"]
                assert (len(row["example_ids"]) == len(row["sources"]) == len(row["source_lines"])
                        == len(row["truncated"]) == len(lengths))
                assert row["position_ids"] == [i for n in lengths for i in range(n)]
                starts = np.cumsum([0] + lengths[:-1])
                assert all(row["labels"][s] == IGNORE_INDEX for s in starts)
                assert row["num_trainable_tokens"] == sum(l != IGNORE_INDEX for l in row["labels"])
                assert row["example_ids"] == sorted(row["example_ids"])
                firsts.append(row["example_ids"][0])
            assert firsts == sorted(firsts)  # rows ordered by their first example


def test_a_shards_packs_depend_only_on_its_examples(runs):
    """Packing the unpacked run's shard again gives the packed run's file, byte for byte."""
    plain, packed = runs
    for split in ("train", "validation"):
        for mine, theirs in zip(shards(plain, split), shards(packed, split)):
            rows = pq.read_table(mine)
            assert rows.schema.remove_metadata() == OUTPUT_SCHEMA
            table = pa.table({
                "input_ids": rows.column("input_ids"), "labels": rows.column("labels"),
                "example_id": rows.column("example_id"), "source": rows.column("source"),
                "source_line": rows.column("source_line"),
                "truncation": pa.array(["prompt_truncated" if t else ""
                                        for t in rows.column("truncated").to_pylist()])})
            data, count = encode_packed(table, PACK, {}, split)
            assert data == theirs.read_bytes()
            assert count == pq.ParquetFile(theirs).metadata.num_rows


def test_stats_and_manifest_describe_the_packing(runs):
    plain, packed = runs
    stats = json.loads((packed / "stats.json").read_text())
    manifest = json.loads((packed / "manifest.json").read_text())
    assert "packing" not in json.loads((plain / "stats.json").read_text())
    assert manifest["packing"] == {"pack_length": PACK, "packer": "best_fit_decreasing"}
    assert manifest["config"]["pack_length"] == PACK and manifest["config"]["max_length"] == PACK
    assert sorted(manifest["schema"]) == sorted(PACKED_SCHEMA.names)
    for split in ("train", "validation"):
        tables = [pq.read_table(p) for p in shards(packed, split)]
        lengths = [n for t in tables for n in t.column("num_tokens").to_pylist()]
        counts = [len(s) for t in tables for s in t.column("seq_lengths").to_pylist()]
        numbers = stats["packing"][split]
        assert numbers["packs"] == len(lengths) == sum(
            e["rows"] for e in manifest["outputs"] if e["split"] == split)
        assert numbers["examples"] == sum(counts) == stats["rows_by_split"][split]
        assert numbers["efficiency"] == round(sum(lengths) / (len(lengths) * PACK), 6)
        assert numbers["examples_per_pack"] == round(sum(counts) / len(counts), 4)
        assert numbers["pack_length_histogram"] == {
            str(k): v for k, v in sorted(collections.Counter(lengths).items())}
        assert numbers["examples_per_pack_histogram"] == {
            str(k): v for k, v in sorted(collections.Counter(counts).items())}
    assert stats["packing"]["train"]["efficiency"] > 0.97
    page = (packed / "report.html").read_text()
    train = stats["packing"]["train"]
    assert "<h2>Packing</h2>" in page and "<h2>Packing</h2>" not in (plain / "report.html").read_text()
    assert (f'<td>train</td><td class="n">{PACK}</td><td class="n">{train["packs"]:,}</td>'
            f'<td class="n">{train["examples"]:,}</td>') in page
    assert f'{100 * train["efficiency"]:.2f}%' in page
    assert (packed / "report" / "packs.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, line", [
    (["--pack-length", "256", "--max-length", "300"],
     "sftprep: error: --max-length 300 is above --pack-length 256: an example must fit a pack "
     "(leave --max-length out to use the pack length)"),
    (["--pack-length", "1"], "sftprep: error: --pack-length must be at least 2 (0: no packing)"),
])
def test_a_pack_length_an_example_cannot_fit_is_refused_in_one_line(tmp_path, capsys, args,
                                                                     line):
    out = tmp_path / "out"
    assert main(["--input", str(DATA / "seed_examples.jsonl"), "--output", str(out)] + args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not out.exists()


def test_inspect_shows_the_examples_inside_a_pack(runs, capsys):
    from sftprep.views.inspect_cli import main as inspect_main

    _, packed = runs
    first = pq.read_table(shards(packed, "train")[0]).slice(0, 1).to_pylist()[0]
    assert len(first["seq_lengths"]) > 1
    assert inspect_main(["--output", str(packed), "--index", "0", "--no-color"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{packed} train row 0 (part-00000-of-00002.parquet row 0): "
                        f"{len(first['seq_lengths'])} examples, {first['num_tokens']} of {PACK} "
                        f"tokens, {first['num_trainable_tokens']} trained")
    headers = [line for line in lines if line.startswith("─── example ")]
    starts = np.cumsum([0] + first["seq_lengths"][:-1])
    assert len(headers) == len(first["seq_lengths"])
    for number, (header, start, length) in enumerate(zip(headers, starts, first["seq_lengths"])):
        assert header.startswith(f"─── example {number + 1}/{len(headers)}  example_id="
                                 f"{first['example_ids'][number]}  {first['sources'][number]}:"
                                 f"{first['source_lines'][number]}  tokens {start}-"
                                 f"{start + length - 1} ({length}, positions 0-{length - 1})")
        assert header.endswith("; its first label is -100 (no target across the boundary)") \
            == (number > 0)
    assert inspect_main(["--output", str(packed), "--index", "100000"]) == 2
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards(packed, "train"))
    assert capsys.readouterr().err.splitlines() == [
        f"sftprep inspect: error: --index 100000: {packed} has {rows} train rows (0 to {rows - 1})"]


def test_pack_length_is_a_config_key_and_max_length_follows_it():
    from sftprep.config import build_config
    from sftprep.pipeline.run import make_parser

    flags = make_parser().parse_args(["--input", "in.jsonl", "--output", "out"])
    config = build_config(flags, {"pack_length": 2048})
    assert (config.pack_length, config.example.max_length) == (2048, 2048)
    assert config.prepare_settings(None, 0).pack_length == 2048
    shorter = build_config(flags, {"pack_length": 2048, "max_length": 1024})
    assert (shorter.pack_length, shorter.example.max_length) == (2048, 1024)
    assert build_config(flags, {}).pack_length == 0

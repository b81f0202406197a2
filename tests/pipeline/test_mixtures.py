"""Mixtures end to end on the bundled files: sources read their own way, shares by trained
tokens, each form of weight with exact row counts, the accounting per source, and errors."""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
import shutil

import pytest
import pyarrow.parquet as pq
import yaml

from sftprep.pipeline.run import main
from sftprep.transforms import mix
from tests.conftest import DATA

GSM8K_LINES = 1500  # of gsm8k: enough for the shares, quick to prepare


def sources(tmp: pathlib.Path, **mixing):
    """The test mixture: gsm8k with its map, alpaca, glaive tool calls as ShareGPT, the seed."""
    gsm8k = tmp / "gsm8k" / "gsm8k_train.jsonl"
    if not gsm8k.exists():
        gsm8k.parent.mkdir(parents=True)
        with open(DATA / "gsm8k_train.jsonl", encoding="utf-8") as handle:
            gsm8k.write_text("".join(next(handle) for _ in range(GSM8K_LINES)), encoding="utf-8")
    entries = [
        {"name": "gsm8k", "input": str(gsm8k), "map": {"prompt": "question",
                                                         "completion": "answer"}},
        {"name": "alpaca", "input": str(DATA / "alpaca_en_demo.jsonl")},
        {"name": "tools", "input": str(DATA / "glaive_toolcall_en_demo.jsonl"),
         "format": "sharegpt"},
        {"name": "seed", "input": str(DATA / "seed_examples.jsonl")},
    ]
    for entry in entries:
        entry.update(mixing.get(entry["name"], {}))
    return entries


def run_config(tmp: pathlib.Path, out: pathlib.Path, config: dict) -> int:
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return main(["--config", str(path), "--output", str(out)])


def rows(out: pathlib.Path):
    return [r for p in sorted((out / "train").glob("*.parquet"))
            for r in pq.read_table(p, columns=["example_id", "source", "repeat",
                                               "num_trainable_tokens"]).to_pylist()]


def digest(out: pathlib.Path):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def assert_accounting_per_source(stats):
    assert stats["accounting"]["holds"]
    for tag, s in stats["per_source"].items():
        assert s["read"] == (s["written"] - s["repeats"] + sum(s["rejected"].values())
                             + sum(s["dropped"].values()) + s["duplicates"]
                             + s["sampled_out"]), tag


SHARES = {"gsm8k": 0.4, "alpaca": 0.3, "tools": 0.25, "seed": 0.05}


@pytest.fixture(scope="module")
def share_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shares")
    config = {"template": "markers", "mix_by": "trained_tokens", "total": 150000,
              "sources": sources(tmp, **{n: {"share": s} for n, s in SHARES.items()})}
    outs = [tmp / "a", tmp / "b"]
    assert run_config(tmp, outs[0], config) == 0
    # The second run repeats the first from its manifest (`--config OUT/manifest.json`).
    assert main(["--config", str(outs[0] / "manifest.json"), "--output", str(outs[1])]) == 0
    return outs


def test_shares_by_trained_tokens_hold_within_one_point(share_runs):
    out = share_runs[0]
    stats = json.loads((out / "stats.json").read_text())
    written = rows(out)
    tokens = collections.Counter()
    for row in written:
        tokens[mix.source_name(row["source"])] += row["num_trainable_tokens"]
    everything = sum(tokens.values())
    for name, share in SHARES.items():
        assert abs(tokens[name] / everything - share) < 0.01, name  # from the rows themselves
        reported = stats["mixture"]["sources"][name]
        assert reported["requested"] == {"share": share}
        assert reported["achieved_share_trained_tokens"] == round(tokens[name] / everything, 6)
    assert abs(everything - 150000) / 150000 < 0.01
    page = (out / "report.html").read_text()
    assert "<h2>Mixture</h2>" in page and "<td>share 40.0%</td>" in page
    assert (f"+ sampled out, written counting each example once ({stats['repeats']:,} repeats "
            f"beyond that, {stats['sampled_out']:,} sampled out)") in page
    # The seed (10 records) is upsampled: its copies count from 0, one row per copy.
    seed = collections.defaultdict(list)
    for row in written:
        if row["source"].startswith("seed/"):
            seed[row["example_id"]].append(row["repeat"])
    assert len(seed) == 10
    assert all(sorted(r) == list(range(len(r))) for r in seed.values())
    assert stats["repeats"] == sum(len(r) - 1 for r in seed.values()) > 0
    assert_accounting_per_source(stats)


def test_two_runs_give_identical_bytes(share_runs):
    """The rerun (from the first run's manifest, sources and all) writes the same bytes."""
    assert digest(share_runs[0]) == digest(share_runs[1])


def test_each_form_of_weight_gives_exact_rows(tmp_path):
    plain = tmp_path / "plain"
    assert run_config(tmp_path, plain, {"template": "markers", "sources": sources(tmp_path)}) == 0
    unique = collections.defaultdict(list)
    for row in rows_without_repeat(plain):
        unique[mix.source_name(row["source"])].append(row["example_id"])
    weights = {"gsm8k": 0.5, "alpaca": 2, "tools": 1.5}  # the seed: weight 1
    out = tmp_path / "weighted"
    config = {"template": "markers",
              "sources": sources(tmp_path, **{n: {"weight": w} for n, w in weights.items()})}
    assert run_config(tmp_path, out, config) == 0
    stats = json.loads((out / "stats.json").read_text())
    written = collections.defaultdict(list)
    for row in rows(out):
        written[mix.source_name(row["source"])].append((row["example_id"], row["repeat"]))
    requests = {n: mix.Request(weight=weights.get(n, 1.0)) for n in unique}
    plan = mix.plan_mixture(requests, {n: mix.Totals.of((mix.draw(i, 0), 1) for i in ids)
                                       for n, ids in unique.items()})
    for name, ids in unique.items():
        expected = sorted((i, r) for i in ids for r in range(plan[name].copies(mix.draw(i, 0))))
        assert sorted(written[name]) == expected, name
    assert len(written["alpaca"]) == 2 * len(unique["alpaca"])
    assert len(written["seed"]) == len(unique["seed"]) == 10
    half = len(unique["gsm8k"]) / 2
    assert abs(len(written["gsm8k"]) - half) < 0.02 * half  # a deterministic half
    tools = len(unique["tools"])
    assert abs(len(written["tools"]) - 1.5 * tools) < 0.02 * tools  # all once, half twice
    for name in unique:
        reported = stats["mixture"]["sources"][name]
        assert reported["requested"] == {"weight": float(weights.get(name, 1.0))}
        assert reported["rows"] == len(written[name])
        assert reported["repeats"] == sum(1 for _, r in written[name] if r > 0)
        assert reported["sampled_out"] == len(unique[name]) - len({i for i, _ in written[name]})
    assert_accounting_per_source(stats)


def rows_without_repeat(out):
    return [r for p in sorted((out / "train").glob("*.parquet"))
            for r in pq.read_table(p, columns=["example_id", "source"]).to_pylist()]


def test_first_source_in_order_keeps_a_duplicate(tmp_path):
    copy = tmp_path / "copy" / "seed_examples.jsonl"
    copy.parent.mkdir()
    shutil.copy(DATA / "seed_examples.jsonl", copy)
    config = {"template": "markers", "sources": [
        {"name": "seed", "input": str(DATA / "seed_examples.jsonl")},
        {"name": "aaa_copy", "input": str(copy)}]}  # sorts first by name, listed second
    out = tmp_path / "out"
    assert run_config(tmp_path, out, config) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_source"]["seed/seed_examples.jsonl"]["written"] == 10
    assert stats["per_source"]["aaa_copy/seed_examples.jsonl"]["duplicates"] == 10
    assert {r["source"] for r in rows_without_repeat(out)} == {"seed/seed_examples.jsonl"}


@pytest.mark.parametrize("change,message", [
    (lambda c: c["sources"][0].update(share=0.5) or c["sources"][1].update(share=0.4),
     "sftprep: error: --config: shares must sum to 1 (within 1e-06), they sum to 0.9"),
    (lambda c: c["sources"][1].update(input=c["sources"][0]["input"]),
     "sftprep: error: input {path} is matched by sources gsm8k and alpaca; a file belongs to "
     "one source"),
    (lambda c: c["sources"][1].update(name="gsm8k"),
     "sftprep: error: --config: source name 'gsm8k' is used twice"),
    (lambda c: c["sources"][0].update(weight=2, share=0.5),
     "sftprep: error: --config: source gsm8k: give weight or share, not both"),
    (lambda c: c["sources"][0].update(shares=0.5),
     "sftprep: error: --config: sources[0]: unknown key 'shares' (a source takes name, input, "
     "format, map, system, train_on, validation_fraction, weight, share)"),
    (lambda c: c.update(input="x.jsonl"),
     "sftprep: error: --input and sources: do not go together (--input is one unnamed source; "
     "name it in sources: instead)"),
])
def test_config_errors_are_one_line(tmp_path, capsys, change, message):
    config = {"sources": sources(tmp_path)[:2]}
    change(config)
    out = tmp_path / "out"
    assert run_config(tmp_path, out, config) == 2
    err = capsys.readouterr().err.strip()
    assert err == message.format(path=config["sources"][0]["input"])
    assert not out.exists()


def test_inspect_shows_each_source_under_its_name(tmp_path, capsys):
    from sftprep.views.inspect_cli import main as inspect_main

    config = {"template": "markers", "sources": sources(tmp_path, tools={
        "system": "You answer with tools."})}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert inspect_main(["--config", str(path), "--n", "1", "--no-color"]) == 0
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line.startswith("== source")]
    assert headings == [f"== source {n} (1 shown) ==" for n in ("gsm8k", "alpaca", "tools",
                                                                 "seed")]
    blocks = dict(zip(("gsm8k", "alpaca", "tools", "seed"), text.split("== source ")[1:]))
    assert "#0 gsm8k/gsm8k_train.jsonl:1 " in blocks["gsm8k"]
    assert "Natal" in blocks["gsm8k"]  # the question, through the source's map
    assert "│ You│ answer│ with│ tools│." in blocks["tools"]  # the source's system prompt
    assert "You answer" not in blocks["alpaca"]


def test_a_mixture_launch_fingerprints_each_input_once(tmp_path, monkeypatch):
    """Each source expands its own globs, and every file is hashed once, for the manifest and
    the run's fingerprint alike (the launch used to expand and hash every input twice)."""
    from sftprep.pipeline import files

    alpaca = tmp_path / "alpaca" / "alpaca_en_demo.jsonl"
    alpaca.parent.mkdir()
    with open(DATA / "alpaca_en_demo.jsonl", encoding="utf-8") as handle:
        alpaca.write_text("".join(next(handle) for _ in range(40)), encoding="utf-8")
    seed = str(DATA / "seed_examples.jsonl")
    hashed = collections.Counter()
    fingerprint = files.fingerprint

    def counting(path):
        hashed[path] += 1
        return fingerprint(path)

    monkeypatch.setattr(files, "fingerprint", counting)
    config = {"template": "markers", "sources": [
        {"name": "seed", "input": seed, "weight": 2},
        {"name": "alpaca", "input": str(alpaca.parent / "*.jsonl"), "weight": 0.5}]}
    out = tmp_path / "out"
    assert run_config(tmp_path, out, config) == 0
    assert hashed == {seed: 1, str(alpaca): 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(i["path"], i["sha256"]) for i in manifest["inputs"]] == sorted(
        (p, hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()) for p in hashed)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_source"]["seed/seed_examples.jsonl"]["written"] == 20

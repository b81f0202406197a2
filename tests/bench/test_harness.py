"""The benchmark harness at a tiny size: its comparisons are fair (same records, same tokens,
same trained tokens for sftprep and the peer), and its table is complete. Not a speed test."""

from __future__ import annotations

import json
import sys

import pytest

from bench import corpora, harness


@pytest.mark.parametrize("kind", ["pc", "chat"])
def test_methods_process_the_same_work(tmp_path, kind):
    rows = harness.run_case(kind, 120, tmp_path, max_length=4096)
    assert [r["method"] for r in rows] == [
        "limit: encode_batch", harness.ENGINE_LABEL, harness.PEER_LABELS[harness.PEERS[kind]],
        "sftprep run", "sftprep run, 2 worker processes"]
    assert {r["records"] for r in rows} == {120}
    limit, engine, peer, single, multi = rows
    # The peer builds exactly what sftprep builds: same tokens, same trained tokens; the limit
    # and the engine tokenize the same texts into the same number of tokens.
    assert peer["tokens"] == single["tokens"] == multi["tokens"] == limit["tokens"] \
        == engine["tokens"]
    assert peer["trainable_tokens"] == single["trainable_tokens"] == multi["trainable_tokens"] > 0
    assert limit["x_limit"] == 1.0 and peer["x_peer"] == 1.0
    assert single["x_limit"] == pytest.approx(single["records_per_s"] / limit["records_per_s"])
    assert all(r["peak_rss_mib"] > 50 and r["wall"] > 0 for r in rows)
    table = harness.markdown(rows, harness.machine())
    assert table.count("\n| " + kind) == 5


def test_corpora_are_deterministic_and_distinct(tmp_path):
    first = corpora.build("chat", 400, tmp_path / "a").read_bytes()
    assert first == corpora.build("chat", 400, tmp_path / "b").read_bytes()
    records = [json.loads(line) for line in first.decode().splitlines()]
    firsts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records]
    assert len(set(firsts)) == 400


def test_a_subset_of_methods_has_no_ratios(tmp_path):
    rows = harness.run_case("pc", 60, tmp_path, max_length=4096, methods=("sftprep",))
    assert [r["method"] for r in rows] == ["sftprep run"] and rows[0]["records"] == 60
    assert rows[0]["x_limit"] is None and rows[0]["x_peer"] is None
    assert harness.markdown(rows, harness.machine()).rstrip().endswith("| – | – |")


def test_rounds_times_every_round_of_an_inline_run(tmp_path, capsys):
    from bench import rounds
    from tests.conftest import DATA

    assert rounds.main(["--", "run", "--input", str(DATA / "seed_examples.jsonl"), "--output",
                        str(tmp_path / "out"), "--progress", "never"]) == 0
    out = capsys.readouterr().out  # sftprep's summary, then the timings
    seconds = json.loads(out[out.rindex("\n{") + 1:])["seconds"]
    assert set(seconds) == {"until the engine starts", "round prepare", "round write",
                            "final metadata", "whole run"}
    assert 0 < seconds["round prepare"] < seconds["whole run"]
    assert (tmp_path / "out" / "manifest.json").exists()


def test_machine_reports_a_commands_exit_wall_and_the_machines_cpu_and_disk(capsys):
    from bench import machine

    assert machine.main(["--", sys.executable, "-c", "import time; time.sleep(0.3)"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exit"] == 0 and result["wall_s"] >= 0.3
    # Over 0.3 s of wall the machine's CPUs spent about that much each, busy or idle.
    spent = result["user_s"] + result["system_s"] + result["idle_s"] + result["iowait_s"]
    assert spent >= 0.3 * 0.9
    assert result["disk_read_kb"] >= 0 and result["disk_written_kb"] >= 0
    assert machine.main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    with pytest.raises(SystemExit):
        machine.main([])


def test_cold_hash_times_each_checkouts_fingerprint_of_an_evicted_file(tmp_path, capsys):
    import hashlib
    import pathlib

    from bench import cold_hash

    path = tmp_path / "input.jsonl"
    path.write_bytes(b'{"prompt": "p", "completion": "c"}\n' * 5000)
    root = str(pathlib.Path(__file__).resolve().parents[2])
    assert cold_hash.main([str(path), "--code", root, "--code", root, "--runs", "1",
                           "--settle", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bytes"] == path.stat().st_size
    assert [row["code"] for row in result["rows"]] == [root, root]
    for row in result["rows"]:
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert min(row["wall_s"], row["user_s"], row["system_s"]) >= 0

"""Versioned publishing, pruning, skip-if-unchanged, and LATEST surviving a killed run."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from sftprep.pipeline import publish
from sftprep.pipeline.run import main
from tests.conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args) -> int:
    return main([str(a) for a in args])


def verify_run(directory: pathlib.Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        assert hashlib.sha256((directory / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]


def test_publish_skip_rebuild_and_prune(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    shutil.copy(DATA / "seed_examples.jsonl", data)
    out = tmp_path / "out"
    base = ["--input", data, "--output", out, "--publish", "--skip-if-unchanged", "--keep-runs", "2"]

    assert run(*base) == 0
    first = publish.read_latest(str(out))
    assert first["path"] == f"runs/{first['run']}"
    assert publish.resolve(str(out)) == str(out / "runs" / first["run"])
    verify_run(out / first["path"])
    capsys.readouterr()

    started = time.monotonic()
    assert run(*base) == 0  # nothing changed: skipped
    assert "unchanged" in capsys.readouterr().out and time.monotonic() - started < 5
    assert publish.read_latest(str(out)) == first
    assert len(list((out / "runs").iterdir())) == 1

    time.sleep(1.1)  # run ids have one-second resolution
    data.write_bytes(data.read_bytes().replace(b"Bonjour", b"Bonjour!"))  # one input byte
    assert run(*base) == 0
    second = publish.read_latest(str(out))
    assert second["run"] != first["run"]
    verify_run(out / second["path"])

    time.sleep(1.1)
    assert run(*base, "--max-length", "2048") == 0  # one option
    third = publish.read_latest(str(out))
    assert third["run"] not in (first["run"], second["run"])
    # --keep-runs 2: the oldest run is pruned, the two newest stay intact.
    assert sorted(p.name for p in (out / "runs").iterdir()) == [second["run"], third["run"]]
    verify_run(out / second["path"])


def test_killed_publishing_run_leaves_latest_on_the_previous_run(tmp_path):
    out = tmp_path / "out"
    args = ["--map", "prompt=question", "--map", "completion=answer", "--publish"]
    assert run("--input", DATA / "seed_examples.jsonl", "--output", out, *args) == 0
    previous = publish.read_latest(str(out))
    before = (out / "LATEST").read_bytes()
    time.sleep(1.1)
    process = subprocess.Popen(
        [sys.executable, "-m", "sftprep", "run", "--input", str(DATA / "gsm8k_train.jsonl"),
         "--output", str(out), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        runs = [p for p in (out / "runs").iterdir() if p.name != previous["run"]]
        if runs and (runs[0] / "tokenizer").exists():
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert (out / "LATEST").read_bytes() == before
    verify_run(out / previous["path"])
    # The next run publishes and cleans up the killed run's leftovers.
    time.sleep(1.1)
    assert run("--input", DATA / "seed_examples.jsonl", "--output", out, *args,
               "--keep-runs", "1") == 0
    latest = publish.read_latest(str(out))
    assert [p.name for p in (out / "runs").iterdir()] == [latest["run"]]

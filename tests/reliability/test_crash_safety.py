"""Kill tests: a run killed by SIGKILL at any point never leaves a half-written output presented
as complete, and rerunning recovers without manual cleanup, to the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["--map", "prompt=question", "--map", "completion=answer", "--template", "chatml",
        "--num-shards", "2", "--validation-fraction", "0.1"]


def start(out: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sftprep", "run", "--input", str(DATA / "gsm8k_train.jsonl"),
         "--output", str(out), *ARGS], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def digest(out: pathlib.Path):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def assert_not_presented_as_complete_unless_it_is(out: pathlib.Path) -> None:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return
    listed = json.loads(manifest.read_text())["outputs"]
    for entry in listed:  # a manifest is only ever written after everything it lists
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    assert start(out).wait(timeout=300) == 0
    return digest(out)


# When to kill: a delay after start, or the first moment a path exists under the output.
KILL_POINTS = [("during start-up", 0.8, None), ("after the tokenizer is written", None,
               "tokenizer/tokenizer.json"), ("while shards are written", None, "train"),
               ("around the final metadata", None, "stats.json")]


@pytest.mark.parametrize("label,delay,marker", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_then_rerun(tmp_path, reference, label, delay, marker):
    out = tmp_path / "out"
    assert start(out).wait(timeout=300) == 0  # a previous complete run is in place
    process = start(out)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if delay is not None and time.monotonic() - deadline + 120 >= delay:
            break
        if marker is not None and (out / marker).exists():
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert_not_presented_as_complete_unless_it_is(out)
    assert start(out).wait(timeout=300) == 0  # no manual cleanup needed
    assert (out / "manifest.json").exists()
    assert digest(out) == reference

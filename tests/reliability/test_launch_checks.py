"""Bounded launch and provenance (issue 13, cases 7, 9, 10): inputs that are not regular files
are refused in one line at launch, one file is read once however it is named, and the run reads
exactly the bytes it fingerprinted or fails with "input changed during the run"."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from sftprep.pipeline import files, publish
from sftprep.pipeline import run as run_module
from sftprep.pipeline.run import main
from tests.conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = DATA / "seed_examples.jsonl"


def run(*args) -> int:
    return main([str(a) for a in args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_fifo_in_an_input_folder_is_refused_at_once(tmp_path):
    """It used to block the launch forever (fingerprinting opened it and waited for a writer)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SEED, folder / "a.jsonl")
    os.mkfifo(folder / "pipe.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "sftprep", "run", "--input", str(folder), "--output",
         str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert result.stderr == f"sftprep: error: --input {folder}/pipe.jsonl is a FIFO, not a " \
                            "regular file\n"
    assert not (tmp_path / "out").exists()


def test_a_socket_is_refused(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert run("--input", path, "--output", tmp_path / "out") == 2
    assert one_error_line(capsys) == f"sftprep: error: --input {path} is a socket, not a " \
                                     "regular file"


def test_a_device_is_refused(tmp_path, capsys):
    assert run("--input", "/dev/null", "--output", tmp_path / "out") == 2
    assert one_error_line(capsys) == "sftprep: error: --input /dev/null is a device, not a " \
                                     "regular file"


def test_a_symlink_loop_in_an_input_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SEED, folder / "a.jsonl")
    os.symlink(folder / "loop.jsonl", folder / "loop.jsonl")
    assert run("--input", folder, "--output", tmp_path / "out") == 2
    assert one_error_line(capsys) == f"sftprep: error: --input {folder}/loop.jsonl: a symlink loop"
    assert not (tmp_path / "out").exists()


def test_a_folder_named_like_an_input_is_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "x.jsonl").mkdir(parents=True)
    shutil.copy(SEED, folder / "a.jsonl")
    assert run("--input", folder, "--output", tmp_path / "out") == 2
    assert one_error_line(capsys) == f"sftprep: error: --input {folder}/x.jsonl is a directory, " \
                                     "not a regular file"
    assert not (tmp_path / "out").exists()


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jsonl")  # Latin-1, as an old export may name it
    shutil.copy(SEED, os.path.join(folder, name))
    assert run("--input", folder, "--output", tmp_path / "out") == 2
    assert one_error_line(capsys) == (f"sftprep: error: --input {folder}/caf\ufffd.jsonl: the "
                                      "file name is not valid UTF-8; rename the file")


def test_one_file_named_twice_is_read_once(tmp_path, monkeypatch):
    """Relative and absolute, and through a symlink: one input, read once."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SEED, folder / "seed.jsonl")
    os.symlink(folder / "seed.jsonl", folder / "link.jsonl")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert run("--input", "in/seed.jsonl", "--input", folder / "seed.jsonl",
               "--input", folder / "link.jsonl", "--output", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["inputs"]] == [str(folder / "link.jsonl")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_read"] == 10 and stats["duplicates"] == 0


ENGINES = pytest.mark.parametrize("engine", ["inline", "beam"])


def _before_the_run(monkeypatch, action):
    """Do `action` after the launch fingerprinted the inputs, just before the plan runs."""
    original = run_module.execute

    def act_then_run(*args, **kwargs):
        action()
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "execute", act_then_run)


def _append(path: pathlib.Path, data: bytes):
    def append():  # as a writer still busy with it
        with open(path, "ab") as handle:
            handle.write(data)
    return append


@ENGINES
def test_a_file_appended_during_the_run_fails_it(tmp_path, capsys, monkeypatch, engine):
    data = tmp_path / "data.jsonl"
    shutil.copy(SEED, data)
    size = data.stat().st_size
    out = tmp_path / "out"
    assert run("--input", data, "--output", out, "--publish") == 0
    latest = (out / "LATEST").read_bytes()
    extra = b'{"prompt": "late", "completion": "record"}\n' * 3
    _before_the_run(monkeypatch, _append(data, extra))
    capsys.readouterr()
    assert run("--input", data, "--output", out, "--publish", "--local-engine", engine) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sftprep: run failed: input changed during the run: {data}: {size} -> "
                   f"{size + len(extra)} bytes; run again once the inputs are final"]
    assert (out / "LATEST").read_bytes() == latest
    [failed] = [p for p in (out / "runs").iterdir() if not (p / "manifest.json").exists()]
    # It read exactly the fingerprinted bytes: the 10 records, not the 3 appended ones.
    assert json.loads((failed / "stats.json").read_text())["records_read"] == 10


@ENGINES
def test_a_file_rewritten_in_place_during_the_run_fails_it(tmp_path, capsys, monkeypatch, engine):
    data = tmp_path / "data.jsonl"
    shutil.copy(SEED, data)
    text = data.read_bytes()

    def rewrite():
        data.write_bytes(text.replace(b"Bonjour", b"BONJOUR"))  # same size, other bytes
        os.utime(data, ns=(1, 1))

    _before_the_run(monkeypatch, rewrite)
    assert run("--input", data, "--output", tmp_path / "out", "--local-engine", engine) == 1
    assert capsys.readouterr().err.strip() == (
        f"sftprep: run failed: input changed during the run: {data}: same size, different "
        "sha256; run again once the inputs are final")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_readers_stop_at_the_fingerprinted_size(tmp_path):
    """The bounded view a reader gets: the first `size` bytes, seekable, whatever follows."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"line one\nline two\nappended later\n")
    with files.open_input(str(path), 18) as stream:
        assert stream.read() == b"line one\nline two\n"
        stream.seek(9)
        assert stream.readline() == b"line two\n" and stream.readline() == b""
        stream.seek(5)
        assert stream.read(100) == b"one\nline two\n"


def test_gs_input_rewritten_during_the_run_fails_it(gcs, tmp_path, capsys, monkeypatch):
    url = "gs://sftprep-test/changed/in/seed.jsonl"
    gcs.upload(SEED, url)
    _before_the_run(monkeypatch, lambda: gcs.upload_bytes(
        SEED.read_bytes() + b'{"prompt": "a", "completion": "b"}\n', url))
    out = "gs://sftprep-test/changed/out"
    assert run("--input", url, "--output", out, "--publish") == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"sftprep: run failed: input changed during the run: {url}: "
                           "generation "), line
    assert "\n" not in line
    assert publish.read_latest(out) is None


FAILING = b'{"prompt": "ok", "completion": "fine"}\n{broken\n{"x": 1}\n'
REASON = ("sftprep: run failed: 2 of 3 records rejected or dropped (66.7% > "
          "--max-rejected-fraction 0.1); top reasons: invalid_json: 1, unknown_format: 1. See "
          "report.html, stats.json and rejected/ of this run; raise the limit if this is expected")


@pytest.mark.parametrize("mode", [[], ["--local-engine", "beam"],
                                  ["--direct_num_workers", "2", "--direct_running_mode",
                                   "multi_processing"]],
                         ids=["inline", "beam_in_process", "beam_processes"])
def test_a_failed_run_prints_its_summary_and_one_line(tmp_path, mode):
    """Issue 14, item 7: no Beam ERROR line and no traceback (the workers' own included);
    --verbose brings the traceback back."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(FAILING)
    args = [sys.executable, "-m", "sftprep", "run", "--input", str(bad), *mode]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([*args, "--output", str(tmp_path / "out")], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1:] == [
        "sftprep: not used, by reason: invalid_json 1, unknown_format 1",
        "sftprep: train tokens 7, trained 2"]
    assert result.stdout.startswith("sftprep: read 3 records in ")
    assert result.stderr.splitlines() == [REASON]
    verbose = subprocess.run([*args, "--output", str(tmp_path / "again"), "--verbose"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert verbose.returncode == 1
    assert "Traceback (most recent call last):" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == REASON


def test_an_unexpected_error_is_one_line_unless_verbose(tmp_path, capsys, monkeypatch):
    """A bug (here: a storage call that raises) is one line naming the error; --verbose shows
    where it came from."""
    def broken(*args, **kwargs):
        raise KeyError("something sftprep did not expect")

    monkeypatch.setattr(run_module, "execute", broken)
    assert run("--input", SEED, "--output", tmp_path / "out") == 1
    assert capsys.readouterr().err == ("sftprep: error: KeyError: 'something sftprep did not "
                                       "expect' (--verbose shows the traceback)\n")
    assert run("--input", SEED, "--output", tmp_path / "out", "--verbose") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "in broken" in err
    assert err.splitlines()[-1] == "sftprep: error: KeyError: 'something sftprep did not expect'"
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / ".sftprep-lock.json").exists()  # released on every exit


def test_only_run_failed_tracebacks_are_kept_off_stderr(capfd):
    """What the filter around worker processes drops, and what it lets through as it comes."""
    from sftprep.pipeline.stderr_filter import HideFailureTracebacks

    failed = (b"Traceback (most recent call last):\n  File \"finish.py\", line 47, in process\n"
              b"    raise RunFailed(failure)\nsftprep.pipeline.finish.RunFailed: 2 of 3 records\n"
              b"\nDuring handling of the above exception, another exception occurred:\n\n"
              b"Traceback (most recent call last):\n  File \"sdk_worker.py\", line 310\n"
              b"sftprep.pipeline.finish.RunFailed: 2 of 3 records [while running 'X']\n\n")
    other = (b"Traceback (most recent call last):\n  File \"prepare.py\", line 9, in setup\n"
             b"MemoryError: out of memory\n\n")
    capfd.readouterr()
    with HideFailureTracebacks():
        os.write(2, b"progress 10%\r")
        os.write(2, b"progress 20%\rWARNING a line\n")
        os.write(2, failed[:50])
        os.write(2, failed[50:])
        os.write(2, other)
        os.write(2, b"last line\n")
    err = capfd.readouterr().err.encode()
    assert err == b"progress 10%\rprogress 20%\rWARNING a line\n" + other + b"last line\n"

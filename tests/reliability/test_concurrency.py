"""One writer per output (issue 13, case 4): the lock, its lease and takeover, unique run ids,
and LATEST moving only forward to complete runs; two publishing runs started together, on local
disk and on gs:// (gcp-storage-emulator)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from sftprep.pipeline import files, lock, publish
from sftprep.pipeline.run import main
from tests.conftest import DATA
from tests.gcs_emulator import BUCKET

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = DATA / "seed_examples.jsonl"
GSM8K = ["--input", str(DATA / "gsm8k_train.jsonl"), "--map", "prompt=question",
         "--map", "completion=answer"]


def run(*args) -> int:
    return main([str(a) for a in args])


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftprep", "run", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def lock_document(**fields) -> str:
    held = {"owner": "someone", "host": socket.gethostname(), "pid": os.getpid(),
            "token": "0" * 32, "lease_seconds": 120, "expires": time.time() + 120}
    return json.dumps({**held, **fields})


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (out / lock.LOCK).write_text(lock_document(pid=sleeper.pid))
        assert run("--input", SEED, "--output", out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"sftprep: error: --output {out} is in use by another sftprep run (someone@"
            f"{socket.gethostname()}, pid {sleeper.pid}, lease until ")
        assert err.endswith(f"wait for it to finish, or delete {out / lock.LOCK} if that run "
                            "is gone\n")
        assert sorted(os.listdir(out)) == [lock.LOCK]  # nothing else written
    finally:
        sleeper.kill()
        sleeper.wait()
    # Same host, its process gone (a killed run): taken over.
    assert run("--input", SEED, "--output", out) == 0
    assert not (out / lock.LOCK).exists()  # released at the end
    # Another host, lease expired: taken over too.
    (out / lock.LOCK).write_text(lock_document(host="elsewhere", expires=time.time() - 1))
    assert run("--input", SEED, "--output", out) == 0
    assert not (out / lock.LOCK).exists()
    # Another host, lease running: its pid says nothing here, so the lock stands.
    (out / lock.LOCK).write_text(lock_document(host="elsewhere", pid=1))
    assert run("--input", SEED, "--output", out) == 2
    assert "is in use by another sftprep run (someone@elsewhere, pid 1" in capsys.readouterr().err


def test_the_lease_is_renewed_while_the_run_holds_it(tmp_path):
    out = tmp_path / "out"
    held = lock.OutputLock(str(out), lease_seconds=0.4)
    with held:
        first = json.loads((out / lock.LOCK).read_text())
        assert first["token"] == held.token and first["pid"] == os.getpid()
        time.sleep(1.0)  # several renewals (every lease / 4)
        later = json.loads((out / lock.LOCK).read_text())
        assert later["token"] == held.token and later["expires"] > first["expires"]
        assert not lock.stale(later) and not held.lost
    assert not (out / lock.LOCK).exists()


def test_run_ids_are_unique_within_a_second_and_sorted_by_time():
    started = 1795990000.25
    ids = {publish.new_run_id(started, "ab" * 32) for _ in range(1000)}
    assert len(ids) == 1000
    prefix = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + ".250000Z-abababab-"
    assert all(i.startswith(prefix) and len(i) == len(prefix) + 8 for i in ids)
    assert publish.new_run_id(started, "ff" * 32) < publish.new_run_id(started + 0.001, "00" * 32)
    assert publish.new_run_id(started + 0.999, "ff" * 32) < \
        publish.new_run_id(started + 1, "00" * 32)


def test_latest_moves_only_forward_and_only_to_a_complete_run(tmp_path):
    out = tmp_path / "out"
    old, new, unfinished = (publish.new_run_id(t, "ab" * 32) for t in (100.0, 200.0, 300.0))
    for run_id in (old, new, unfinished):
        (out / "runs" / run_id).mkdir(parents=True)
    for run_id in (old, new):
        (out / "runs" / run_id / "manifest.json").write_text("{}")
    assert publish.write_latest(str(out), new)
    assert not publish.write_latest(str(out), old)  # backwards: refused
    assert json.loads((out / "LATEST").read_text())["run"] == new
    assert not publish.write_latest(str(out), unfinished)  # no manifest: refused
    assert json.loads((out / "LATEST").read_text())["run"] == new


def assert_latest_is_complete(read_text, root: str) -> str:
    latest = json.loads(read_text(f"{root}/LATEST"))
    manifest = json.loads(read_text(f"{root}/{latest['path']}/manifest.json"))
    for entry in manifest["outputs"]:
        data = files.read_bytes(f"{root}/{latest['path']}/{entry['path']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    files.read_bytes(f"{root}/{latest['path']}/tokenizer/tokenizer.json")
    return latest["run"]


def _two_runs_together(*args):
    first, second = start(*args), start(*args)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    [(_, _, refusal)] = [r for r in results if r[0] == 2]
    assert refusal.count("\n") == 1, refusal
    assert " is in use by another sftprep run (" in refusal, refusal
    return results


def test_two_local_publishing_runs_started_together(tmp_path):
    out = tmp_path / "out"
    _two_runs_together(*GSM8K, "--output", out, "--publish")
    run_id = assert_latest_is_complete(files.read_text, str(out))
    assert [p.name for p in (out / "runs").iterdir()] == [run_id]
    assert not (out / lock.LOCK).exists()


def test_two_gs_publishing_runs_started_together(gcs, tmp_path):
    url = f"gs://{BUCKET}/together/in/gsm8k_train.jsonl"
    gcs.upload(DATA / "gsm8k_train.jsonl", url)
    out = f"gs://{BUCKET}/together/out"
    args = ["--input", url, "--map", "prompt=question", "--map", "completion=answer"]
    _two_runs_together(*args, "--output", out, "--publish")
    run_id = assert_latest_is_complete(files.read_text, out)
    names = gcs.read_tree(out)
    assert {name.split("/")[1] for name in names if name.startswith("runs/")} == {run_id}
    assert lock.LOCK not in names  # released


def test_a_held_gs_lock_refuses_a_run_in_one_line(gcs, tmp_path, capsys):
    out = f"gs://{BUCKET}/held/out"
    with lock.OutputLock(out) as held:
        assert json.loads(gcs.read_tree(out)[lock.LOCK])["token"] == held.token
        assert run("--input", SEED, "--output", out) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sftprep: error: --output {out} is in use by another sftprep "
                              "run (") and err.count("\n") == 1
    assert lock.LOCK not in gcs.read_tree(out)
    assert run("--input", SEED, "--output", out) == 0
    assert json.loads(files.read_text(f"{out}/manifest.json"))["summary"]["records_read"] == 10


def test_sigterm_releases_the_lock(tmp_path):
    """A stopped run (SIGTERM, as schedulers stop jobs) gives the lock back on its way out."""
    out = tmp_path / "out"
    process = start(*GSM8K, "--output", out)
    deadline = time.monotonic() + 120
    while not (out / "tokenizer").exists() and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    assert (out / lock.LOCK).exists()
    process.terminate()
    assert process.wait(timeout=120) == 143
    assert not (out / lock.LOCK).exists()
    assert not (out / "manifest.json").exists()


def test_a_lost_gs_create_race_refuses_in_one_line(gcs, monkeypatch):
    """On Cloud Storage the lock is created with if_generation_match=0: when another run
    created it first, the upload fails with 412 and this run refuses, naming the winner.
    gcp-storage-emulator ignores preconditions, so the 412 is played here: the other run's lock
    lands, then our create fails as Cloud Storage would fail it."""
    from google.api_core import exceptions

    out = f"gs://{BUCKET}/race/out"
    real_upload, sent = lock._upload, []

    def lose_the_race(url, data, if_generation_match):
        sent.append(if_generation_match)
        real_upload(url, lock_document(owner="winner", host="elsewhere").encode(), None)
        raise exceptions.PreconditionFailed("At least one of the pre-conditions you specified "
                                            "did not hold.")

    monkeypatch.setattr(lock, "_upload", lose_the_race)
    with pytest.raises(lock.ConfigError) as refused:
        lock.OutputLock(out).acquire()
    assert sent == [0]  # create only if absent
    assert str(refused.value).startswith(f"--output {out} is in use by another sftprep run "
                                         "(winner@elsewhere, pid ")


def test_a_stale_gs_lock_is_taken_over(gcs):
    out = f"gs://{BUCKET}/stale/out"
    gcs.upload_bytes(lock_document(host="elsewhere", expires=time.time() - 5).encode(),
                     f"{out}/{lock.LOCK}")
    assert run("--input", SEED, "--output", out) == 0
    names = gcs.read_tree(out)
    assert lock.LOCK not in names and "manifest.json" in names

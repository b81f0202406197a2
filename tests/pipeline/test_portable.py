"""The portable runner for real: Beam's job service and an external SDK worker pool, each its own
process on loopback, run `sftprep run` through the same Job and Fn APIs Flink and Dataflow use.
The output must be byte-identical to the local run."""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from sftprep.pipeline.run import main
from tests.conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["--template", "chatml", "--num-shards", "2", "--validation-fraction", "0.1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def services(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    job_port = free_port()
    port_file = tmp_path / "worker_port"
    processes = [
        subprocess.Popen([sys.executable, "-m",
                          "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port), "--staging_dir", str(tmp_path / "staging")],
                         env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "tests.pipeline.loopback_worker_pool",
                          str(port_file)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for_port(job_port)
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker_port = int(port_file.read_text())
        wait_for_port(worker_port)
        yield job_port, worker_port
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


def digest(out: pathlib.Path):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_portable_runner_matches_the_local_run(tmp_path, services):
    job_port, worker_port = services
    inputs = ["--input", str(DATA / "glaive_toolcall_en_demo.jsonl"),
              "--input", str(DATA / "v1_sft_demo.jsonl")]
    local = tmp_path / "local"
    assert main([*inputs, "--output", str(local), *ARGS]) == 0
    portable = tmp_path / "portable"
    assert main([*inputs, "--output", str(portable), *ARGS, "--runner", "PortableRunner",
                 "--job_endpoint", f"localhost:{job_port}", "--environment_type", "EXTERNAL",
                 "--environment_config", f"127.0.0.1:{worker_port}"]) == 0
    assert digest(portable) == digest(local)
    assert len([k for k in digest(local) if k.endswith(".parquet")]) == 3

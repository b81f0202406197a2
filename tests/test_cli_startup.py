"""The `sftprep run` console script runs without the packages it never uses (pandas, Pub/Sub's
client), and writes the same bytes as `main`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pathlib
import subprocess
import sys

from sftprep.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = str(ROOT / "examples" / "seed_examples.jsonl")

# What `sftprep run` executes (sftprep.cli:entry), reporting its exit code and which of the
# unused packages were loaded just before the process exits.
ENTRY = """
import json, os, sys
real_exit = os._exit
def report(code):
    loaded = sorted(n for n in ("pandas", "google.cloud.pubsub", "google.cloud.pubsub_v1")
                    if n in sys.modules)
    print(json.dumps({"code": code, "loaded": loaded}), flush=True)
    real_exit(code)
os._exit = report
sys.argv = ["sftprep", "run", "--input", %r, "--output", %r, "--progress", "never"]
from sftprep.cli import entry
entry()
"""


def test_the_run_command_never_loads_unused_packages_and_writes_what_main_writes(tmp_path):
    # Installed here (Beam would import them), so the run below really goes without them.
    assert importlib.util.find_spec("pandas") and importlib.util.find_spec("google.cloud.pubsub")
    console = tmp_path / "console"
    done = subprocess.run([sys.executable, "-c", ENTRY % (SEED, str(console))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "loaded": []}
    assert done.stderr == ""

    in_process = tmp_path / "in_process"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", "--input", SEED, "--output", str(in_process),
                     "--progress", "never"]) == 0
    shard = "train/part-00000-of-00001.parquet"
    assert (console / shard).read_bytes() == (in_process / shard).read_bytes()
    stats = json.loads((console / "stats.json").read_text())
    assert stats["records_read"] == 10 and stats["rows_written"] == 10
    # `main` called in a process leaves that process's imports alone.
    assert not any(type(f).__name__ == "_Unused" for f in sys.meta_path)


def test_the_run_command_builds_a_dataflow_job_without_them(tmp_path):
    """The launcher's other paths run without those packages too: a Dataflow dry run through
    the console script builds the job."""
    job = tmp_path / "job.json"
    done = subprocess.run(
        [sys.executable, "-c", "from sftprep.cli import entry; entry()", "run", "--input", SEED,
         "--output", str(tmp_path / "out"), "--runner", "DataflowRunner", "--project",
         "sftprep-test", "--region", "europe-west4", "--temp_location", "gs://sftprep-test/tmp",
         "--sdk_container_image", "europe-west4-docker.pkg.dev/p/sftprep/sftprep:t",
         "--dry_run", "True", "--dataflow_job_file", str(job)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    assert json.loads(job.read_text())["job"]["type"] == "JOB_TYPE_BATCH"

"""Progress of local runs: readers' tallies add up to exactly what was read."""

from __future__ import annotations

import io
import json
import time

import pytest

from sftprep.pipeline import progress, run as run_module
from sftprep.pipeline.run import main
from tests.conftest import DATA


@pytest.mark.parametrize("records, nbytes, total, elapsed, expected", [
    (0, 0, 1000, 1.0, "read 0 records (0% of 0.0 MiB) · 0 records/s"),
    (500, 1 << 20, 4 << 20, 5.0, "read 500 records (25% of 4.0 MiB) · 100 records/s · ETA 0:15"),
    (900, 4 << 20, 4 << 20, 9.0, "read 900 records (100% of 4.0 MiB) · 100 records/s · writing shards"),
    (10, 0, 0, 2.0, "read 10 records · 5 records/s"),
])
def test_progress_line(records, nbytes, total, elapsed, expected):
    assert progress.format_line(records, nbytes, total, elapsed) == expected


def test_tallies_of_several_readers_are_summed(tmp_path):
    first, second = progress.ReadTally(str(tmp_path)), progress.ReadTally(str(tmp_path))
    first.add(10, 100)
    second.add(5, 50)
    second.add(1, 7)  # within a second of the last flush: not yet visible
    assert progress.read_tallies(str(tmp_path)) == (15, 150)
    second.flush()
    assert progress.read_tallies(str(tmp_path)) == (16, 157)

    stream = io.StringIO()
    printer = progress.ProgressPrinter(str(tmp_path), 314, stream=stream, interval=0.05).start()
    deadline = time.monotonic() + 10
    while "records" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    printer.stop()
    assert stream.getvalue().startswith("sftprep: read 16 records (50% of 0.0 MiB)")


def test_a_run_credits_every_record_and_byte(tmp_path, monkeypatch):
    """Two worker processes and many byte ranges: the tallies end at the exact totals."""
    finals = []

    class Recording(progress.ProgressPrinter):
        def stop(self):
            super().stop()
            finals.append(progress.read_tallies(self._directory))

    monkeypatch.setattr(run_module, "ProgressPrinter", Recording)
    data = tmp_path / "gsm8k_1500.jsonl"
    data.write_text("\n".join((DATA / "gsm8k_train.jsonl").read_text().splitlines()[:1500]) + "\n")
    out = tmp_path / "out"
    assert main(["--input", str(data), "--input", str(DATA / "seed_examples.jsonl"),
                 "--output", str(out), "--map", "prompt=question", "--map", "completion=answer",
                 "--progress", "always", "--range-bytes", "65536",
                 "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    total_bytes = data.stat().st_size + (DATA / "seed_examples.jsonl").stat().st_size
    assert finals == [(stats["records_read"], total_bytes)]
    assert json.loads((out / "manifest.json").read_text())["config"]["progress"] == "always"


def test_progress_is_off_when_not_on_a_terminal(tmp_path, capsys):
    assert main(["--input", str(DATA / "seed_examples.jsonl"), "--output", str(tmp_path / "o")]) == 0
    assert "records/s" not in capsys.readouterr().err

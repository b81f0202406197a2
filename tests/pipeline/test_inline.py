"""The inline run (no Beam) writes the bytes Beam's graph writes, file for file, and `auto`
picks it for local runs with no Beam option (tests/pipeline/test_run.py compares its forked
children too)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from sftprep.config import RunConfig
from sftprep.errors import ConfigError
from sftprep.pipeline import run as run_module
from sftprep.pipeline.run import main
from tests.conftest import DATA
from tests.pipeline.test_run import tree_digest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GSM8K_MAP = ["--map", "prompt=question", "--map", "completion=answer"]


def both_engines(tmp: pathlib.Path, *args, code: int = 0):
    """Run `args` inline and on Beam; the two outputs' files (all but the manifest) and the
    manifests' `outputs` and `summary`."""
    found = []
    for engine in ("inline", "beam"):
        out = tmp / engine
        assert main([str(a) for a in args] + ["--output", str(out), "--local-engine", engine,
                                              "--progress", "never"]) == code
        manifest = out / "manifest.json"
        listed = json.loads(manifest.read_text()) if manifest.exists() else {}
        found.append((tree_digest(out), listed.get("outputs"), listed.get("summary")))
    return found


@pytest.fixture(scope="module")
def gsm8k_1500(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "gsm8k_1500.jsonl"
    with open(DATA / "gsm8k_train.jsonl", encoding="utf-8") as handle:
        path.write_text("".join(next(handle) for _ in range(1500)), encoding="utf-8")
    return path


CASES = {
    # Every dialect of the bundled files, a duplicate across two inputs, a validation split
    # and three shards, each file read in many ranges (line numbers carried across them).
    "dialects_ranges_validation": [
        "--input", DATA / "seed_examples.jsonl", "--input", DATA / "alpaca_en_demo.jsonl",
        "--input", DATA / "glaive_toolcall_en_demo.jsonl", "--input", DATA / "v1_sft_demo.jsonl",
        "--input", ROOT / "examples" / "seed_examples.jsonl", "--template", "chatml",
        "--num-shards", "3", "--validation-fraction", "0.1", "--range-bytes", "65536",
        "--batch-size", "100"],
    # Truncation and drops, and rejected records of every kind in several rejected files.
    "truncation_and_rejections": [
        "--input", "{gsm8k}", "--input", "{hostile}", *GSM8K_MAP, "--max-length", "96",
        "--truncation", "drop", "--num-shards", "2", "--max-rejected-fraction", "1"],
    "packed": ["--input", "{gsm8k}", "--input", DATA / "alpaca_en_demo.jsonl", *GSM8K_MAP,
               "--pack-length", "1024", "--num-shards", "2"],
}
HOSTILE = (b'{"prompt": "ok", "completion": "fine"}\n{broken\n{"x": 1}\n\n'
           b'{"prompt": "", "completion": "empty prompt"}\n[1, 2]\n'
           b'{"messages": [{"role": "user", "content": "no answer"}]}\n\xff\xfe\n')


@pytest.mark.parametrize("case", sorted(CASES))
def test_inline_and_beam_write_the_same_bytes(case, tmp_path, gsm8k_1500):
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes(HOSTILE)
    args = [str(a).format(gsm8k=gsm8k_1500, hostile=hostile) for a in CASES[case]]
    inline, beam = both_engines(tmp_path, *args)
    assert inline == beam
    assert inline[2]["records_read"] > 0


def test_a_mixture_inline_and_on_beam(tmp_path, gsm8k_1500):
    """Weights (a repeat column, copies planned from every shard's totals) and a duplicate the
    first source keeps."""
    copy = tmp_path / "copy" / "seed_examples.jsonl"
    copy.parent.mkdir()
    copy.write_bytes((DATA / "seed_examples.jsonl").read_bytes())
    config = {"template": "markers", "num_shards": 2, "sources": [
        {"name": "gsm8k", "input": str(gsm8k_1500), "weight": 0.5,
         "map": {"prompt": "question", "completion": "answer"}},
        {"name": "alpaca", "input": str(DATA / "alpaca_en_demo.jsonl"), "weight": 2},
        {"name": "seed", "input": str(DATA / "seed_examples.jsonl"), "weight": 1.5},
        {"name": "seed_again", "input": str(copy)}]}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    inline, beam = both_engines(tmp_path, "--config", path)
    assert inline == beam
    assert inline[2]["duplicates"] >= 10  # seed_again's ten, and some within gsm8k and alpaca


def test_a_failed_run_fails_alike(tmp_path, capsys):
    """Too many rejections: stats.json and the report, no manifest, the same line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(HOSTILE)
    inline, beam = both_engines(tmp_path, "--input", bad, code=1)
    assert inline == beam and inline[1] is None
    assert "stats.json" in inline[0] and "report.html" in inline[0]
    lines = [line for line in capsys.readouterr().err.splitlines() if "run failed" in line]
    assert len(lines) == 2 and lines[0] == lines[1]


def test_a_published_inline_run(tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["--input", str(DATA / "seed_examples.jsonl"), "--output", str(out),
                     "--publish", "--keep-runs", "1", "--progress", "never"]) == 0
    latest = json.loads((out / "LATEST").read_text())
    assert [p.name for p in (out / "runs").iterdir()] == [latest["run"]]
    assert (out / latest["path"] / "manifest.json").exists()


def test_auto_picks_inline_for_local_runs_in_one_process_or_forked(monkeypatch):
    monkeypatch.setattr(run_module, "usable_cpus", lambda: 2)
    small = run_module.FORKED_LOCAL_BYTES - 1

    def inline(engine="auto", beam_args=(), total=small, processes=0, output="o"):
        config = RunConfig(inputs=("x",), output=output, local_engine=engine,
                           local_processes=processes)
        return run_module.runs_inline(config, list(beam_args), total)

    assert inline()
    assert inline(total=1 << 30)  # forking a child per core
    assert inline(processes=2) and inline(processes=1)
    assert not inline(total=1 << 30, processes=1)  # large in one process: Beam overlaps work
    assert not inline(total=1 << 30, output="gs://bucket/out")  # no fork for a remote output
    assert not inline(beam_args=["--direct_running_mode", "in_memory"])  # any Beam option
    assert not inline("beam")
    assert inline("inline", total=1 << 30, processes=1)
    assert inline("inline", processes=2)
    with pytest.raises(ConfigError, match="--local-engine inline runs without Beam: the Beam "
                                          "option --runner needs --local-engine beam"):
        inline("inline", beam_args=["--runner", "DirectRunner"])


def test_a_conflicting_engine_is_an_error_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(DATA / "seed_examples.jsonl"), "--output", str(out),
                 "--local-engine", "inline", "--direct_num_workers", "2"]) == 2
    assert capsys.readouterr().err.startswith(
        "sftprep: error: --local-engine inline runs without Beam: the Beam option "
        "--direct_num_workers needs --local-engine beam")
    assert not out.exists()


def test_a_small_run_never_imports_beam(tmp_path):
    """What the inline run is for: no Beam start-up (python -m bench.startup times it)."""
    code = ("import sys; from sftprep.cli import main; "
            f"code = main(['run', '--input', {str(DATA / 'seed_examples.jsonl')!r}, "
            f"'--output', {str(tmp_path / 'out')!r}]); "
            "print(code, 'apache_beam' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert result.stdout.splitlines()[-1] == "0 False", result.stderr


def test_ranges_get_the_newlines_before_them_counted_as_they_are_handed_out(tmp_path,
                                                                            monkeypatch):
    from sftprep.pipeline import read

    paths = []
    for name, lines in (("a.jsonl", 40), ("b.jsonl", 25)):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"n": i, "pad": "x" * (i % 7)}) + "\n"
                                for i in range(lines)))
        paths.append((str(path), path.stat().st_size, name))
    ranges = read.input_ranges(paths, 97)
    assert len(ranges) > 10
    counted = []
    count = read.range_newlines
    monkeypatch.setattr(read, "range_newlines", lambda r: counted.append(r) or count(r))
    handed = read.with_lines_before(ranges)
    for position, (file_range, before) in enumerate(handed):
        # Only the ranges before this one have been counted, none after.
        assert counted == ranges[:position]
        data = pathlib.Path(file_range.path).read_bytes()
        assert before == data[:file_range.start].count(b"\n")


@pytest.mark.parametrize("engine", ["inline", "beam"])
def test_a_run_drops_what_it_read_of_its_inputs_from_the_page_cache(tmp_path, monkeypatch,
                                                                     engine):
    """The launch's hash and every read range tell the kernel they are done with the bytes they
    read (files.forget_read): the hash the whole file, each range its own bytes, after it."""
    from sftprep.transforms.read import plan_ranges

    inputs = [tmp_path / "a.jsonl", tmp_path / "b.json"]
    inputs[0].write_bytes((DATA / "alpaca_en_demo.jsonl").read_bytes())
    inputs[1].write_text(json.dumps([{"prompt": f"q{i}", "completion": f"a{i}"}
                                     for i in range(30)]))
    dropped = []
    advise = os.posix_fadvise

    def recording(descriptor, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            dropped.append((os.path.realpath(f"/proc/self/fd/{descriptor}"), offset, length))
        return advise(descriptor, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    assert main(["--input", str(inputs[0]), "--input", str(inputs[1]), "--range-bytes", "65536",
                 "--output", str(tmp_path / "out"), "--local-engine", engine,
                 "--local-processes", "1", "--progress", "never"]) == 0
    for path in inputs:
        size = path.stat().st_size
        ranges = {(r.start, (r.end or size) - r.start) for r in plan_ranges(str(path), size, 65536)}
        assert len(ranges) == (13 if path.suffix == ".jsonl" else 1)
        calls = [(offset, length) for name, offset, length in dropped if name == str(path)]
        # The hash: the whole file in one call (it is under files.DROP_BEHIND_BYTES); then
        # each range once, after its last read.
        assert sorted(calls) == sorted([(0, size)] + list(ranges))


def test_forget_read_leaves_remote_paths_alone(monkeypatch):
    from sftprep.pipeline import files

    monkeypatch.setattr(os, "posix_fadvise", lambda *a: pytest.fail("called for a remote path"))
    files.forget_read("gs://bucket/a.jsonl", 0, 10)
    files.forget_read("/no/such/file.jsonl", 0, 10)  # gone: nothing to drop, no error


def test_a_range_failing_on_one_child_stops_the_other_at_its_flush(tmp_path, monkeypatch,
                                                                    capsys, gsm8k_1500):
    """A range fails on one child, slowly, while the other prepares the last ranges and takes
    its flush, which waits at the barrier for the second flush; the parent, stopped by the
    error before it hands that one out, stops the waiting child rather than waiting for it
    (FLUSH_WAIT_SECONDS, an hour; Ctrl-C at the end of a prepare round did the same)."""
    from sftprep.pipeline import inline
    from sftprep.transforms.read import plan_ranges

    ranges = plan_ranges(str(gsm8k_1500), gsm8k_1500.stat().st_size, 65536)
    # The parent keeps two tasks per child in flight: when it hands out the first flush, it
    # waits for the result of the fourth range from the end.
    failing_range = ranges[-4].index
    prepare = inline._Steps.prepare

    def failing(steps, task):
        if task[0].index == failing_range:
            time.sleep(3)  # the other child prepares the last three ranges and takes its flush
            raise OSError("the disk went away")
        return prepare(steps, task)

    monkeypatch.setattr(inline._Steps, "prepare", failing)
    monkeypatch.setattr(inline, "FLUSH_WAIT_SECONDS", 300.0)
    began = time.monotonic()
    code = main(["--input", str(gsm8k_1500), *GSM8K_MAP, "--range-bytes", "65536",
                 "--local-processes", "2", "--local-engine", "inline",
                 "--output", str(tmp_path / "out"), "--progress", "never"])
    assert code != 0
    assert "the disk went away" in capsys.readouterr().err
    assert time.monotonic() - began < 120  # not the 300 s the flush would have waited

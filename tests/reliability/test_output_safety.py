"""sftprep deletes only what it wrote (issue 13, case 1-3): user files, inputs, the tokenizer
and old outputs without a marker survive every run, and every launch-time error touches nothing."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import pytest

from sftprep.pipeline import ownership, publish
from sftprep.pipeline.run import main
from tests.conftest import DATA

SEED = DATA / "seed_examples.jsonl"


def run(*args) -> int:
    return main([str(a) for a in args])


def snapshot(root: pathlib.Path):
    """Every file under root with its sha256 (and every folder), to compare before and after."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sftprep: error: "), err
    return lines[0]


def test_an_input_and_a_user_file_inside_the_output_are_never_deleted(tmp_path, capsys):
    """The reported case: proj/train/raw.jsonl (the input) and proj/report/q3.docx."""
    proj = tmp_path / "proj"
    (proj / "train").mkdir(parents=True)
    (proj / "report").mkdir()
    shutil.copy(SEED, proj / "train" / "raw.jsonl")
    (proj / "report" / "q3.docx").write_text("x\n")
    before = snapshot(proj)
    assert run("--input", proj / "train" / "raw.jsonl", "--output", proj) == 2
    assert one_error_line(capsys) == (
        f"sftprep: error: --output {proj} contains --input {proj}/train/raw.jsonl; sftprep "
        "replaces what is in its output: move it out, or choose another --output")
    assert snapshot(proj) == before
    # Input elsewhere: the folder is still not sftprep's (no marker), so still refused.
    assert run("--input", SEED, "--output", proj) == 2
    assert one_error_line(capsys) == (
        f"sftprep: error: --output {proj} is not empty and holds no sftprep output (report is "
        "not sftprep's); choose an empty or new directory")
    assert snapshot(proj) == before


def test_a_file_the_marker_does_not_list_makes_the_run_refuse(tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out) == 0
    marker = json.loads((out / ownership.MARKER).read_text())
    assert marker == {"entries": sorted(ownership.DATASET_ENTRIES), "format": 1,
                      "written_by": "sftprep"}
    (out / "notes.md").write_text("mine\n")
    before = snapshot(out)
    capsys.readouterr()
    assert run("--input", SEED, "--output", out) == 2
    assert one_error_line(capsys) == (
        f"sftprep: error: --output {out} holds notes.md, which sftprep did not write; move it "
        "away, or choose another --output")
    assert snapshot(out) == before
    (out / "notes.md").unlink()
    assert run("--input", SEED, "--output", out) == 0  # its own output: replaced
    assert (out / "manifest.json").exists()


def test_an_output_of_sftprep_0_1_without_a_marker_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out) == 0
    (out / ownership.MARKER).unlink()  # what sftprep 0.1 left: the same files, no marker
    before = snapshot(out)
    capsys.readouterr()
    assert run("--input", SEED, "--output", out) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"sftprep: error: --output {out} holds an output without sftprep's "
                           "marker .sftprep-output.json (written by sftprep 0.1, or by hand)")
    assert "delete the old output yourself, or choose a new directory" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["tokenizer", "config", "template"])
def test_files_the_run_reads_may_not_lie_in_the_output(tmp_path, capsys, tokenizer_dir, where):
    """`--tokenizer OUT/tokenizer --output OUT` refuses instead of deleting the tokenizer; the
    same for the --config file and a --template file."""
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out) == 0
    args = ["--input", SEED, "--output", out]
    if where == "tokenizer":
        args += ["--tokenizer", out / "tokenizer"]
        flag, path = "--tokenizer", out / "tokenizer"
    elif where == "config":
        args += ["--config", out / "manifest.json"]
        flag, path = "--config", out / "manifest.json"
    else:
        (out / "stats.json").write_text("{{ messages }}")  # a file the marker lists, as template
        args += ["--template", out / "stats.json"]
        flag, path = "--template", out / "stats.json"
    before = snapshot(out)
    capsys.readouterr()
    assert run(*args) == 2
    assert one_error_line(capsys) == (
        f"sftprep: error: --output {out} contains {flag} {path}; sftprep replaces what is in "
        "its output: move it out, or choose another --output")
    assert snapshot(out) == before


@pytest.mark.parametrize("args, message", [
    (["--template", "chatmll"], "unknown --template 'chatmll'"),
    (["--runner", "DirectRuner"], "--runner DirectRuner: Unexpected pipeline runner: DirectRuner."),
    (["--direct_num_workers", "abc"],
     "Beam option: argument --direct_num_workers: invalid int value: 'abc'"),
    (["--no_such_beam_option", "1"], "unknown option '--no_such_beam_option'"),
    (["--tokenizer", "/no/such/tokenizer"], "cannot load --tokenizer '/no/such/tokenizer'"),
    (["--max-record-bytes", "1e20"], "invalid int value: '1e20'"),
    (["--max-record-bytes", str(10 ** 20)], "--max-record-bytes must be at most 1073741824"),
    (["--keep-runs", "x"], "invalid int value: 'x'"),
    (["--input", "nothing/*.jsonl"], "--input matched no files: nothing/*.jsonl"),
])
def test_launch_errors_leave_a_finished_output_intact(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    base = ["--output", out] + ([] if "--input" in args else ["--input", SEED])
    assert run(*base, *args) == 2
    line = one_error_line(capsys)
    assert message in line, line
    assert snapshot(out) == before


def test_publish_prunes_only_the_runs_sftprep_made(tmp_path, capsys):
    """exp/runs/1_first/model.pt and exp/runs/2024-05-01_baseline/model.pt are the user's."""
    exp = tmp_path / "exp"
    for name in ("1_first", "2024-05-01_baseline"):
        (exp / "runs" / name).mkdir(parents=True)
        (exp / "runs" / name / "model.pt").write_bytes(b"weights " + name.encode())
    before = snapshot(exp)
    # A folder without sftprep's marker: refused, nothing touched.
    assert run("--input", SEED, "--output", exp, "--publish") == 2
    assert "is not empty and holds no sftprep output" in one_error_line(capsys)
    assert snapshot(exp) == before

    # In a marked publishing root, user folders under runs/ survive pruning, with --keep-runs.
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out, "--publish") == 0
    for name in ("1_first", "2024-05-01_baseline"):
        shutil.copytree(exp / "runs" / name, out / "runs" / name)
    assert run("--input", SEED, "--output", out, "--publish", "--max-length", "300") == 0
    assert run("--input", SEED, "--output", out, "--publish", "--max-length", "400",
               "--keep-runs", "1") == 0
    latest = publish.read_latest(str(out))["run"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        ["1_first", "2024-05-01_baseline", latest])
    for name in ("1_first", "2024-05-01_baseline"):
        assert (out / "runs" / name / "model.pt").read_bytes() == b"weights " + name.encode()
    assert json.loads((out / ownership.MARKER).read_text())["entries"] == ["LATEST", "runs"]


def test_a_failed_plain_run_presents_nothing_as_complete(tmp_path, capsys):
    """Without --publish the output is rewritten in place: the old manifest goes first."""
    out = tmp_path / "out"
    assert run("--input", SEED, "--output", out) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "completion": "fine"}\n{broken\n')
    assert run("--input", bad, "--output", out) == 1
    assert not (out / "manifest.json").exists()
    assert json.loads((out / "stats.json").read_text())["records_read"] == 2

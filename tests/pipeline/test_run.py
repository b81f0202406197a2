"""`sftprep run` end to end on the real data files: outputs, accounting, determinism, errors."""

from __future__ import annotations

import hashlib
import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from sftprep.pipeline.run import main
from sftprep.tokenizer.runtime import TokenizerRuntime
from sftprep.views import report
from tests.conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args) -> int:
    return main([str(a) for a in args])


def read_rows(out: pathlib.Path, split="train"):
    tables = [pq.read_table(p) for p in sorted((out / split).glob("*.parquet"))]
    return [row for t in tables for row in t.to_pylist()]


def tree_digest(out: pathlib.Path):
    """sha256 of every output file except the manifest (which records timings)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gsm8k") / "out"
    code = run("--input", DATA / "gsm8k_train.jsonl", "--output", out, "--template", "markers",
               "--map", "prompt=question", "--map", "completion=answer",
               "--validation-fraction", "0.05", "--num-shards", "2")
    assert code == 0
    return out


def test_gsm8k_markers_end_to_end(gsm8k_run):
    out = gsm8k_run
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert stats["records_read"] == 7473 and stats["accounting"]["holds"]
    assert stats["rows_written"] + stats["duplicates"] + stats["rejected"] + stats["dropped"] == 7473
    assert 250 < stats["rows_by_split"]["validation"] < 500  # about 5%
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert [p.name for p in (out / "validation").iterdir()] == ["part-00000-of-00001.parquet"]
    assert manifest["tokenizer"]["added_tokens"] == ["<|SYSTEM|>", "<|USER|>", "<|ASSISTANT|>",
                                                     "<|TOOL|>"]
    assert manifest["tokenizer"]["vocab_size"] == 129284
    rows_in_manifest = sum(f["rows"] for f in manifest["outputs"] if f["split"] != "rejected")
    assert rows_in_manifest == stats["rows_written"]
    for entry in manifest["outputs"]:
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(
        (DATA / "gsm8k_train.jsonl").read_bytes()).hexdigest()

    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    answers = {i: json.loads(line)["answer"] for i, line in
               enumerate((DATA / "gsm8k_train.jsonl").read_text().splitlines(), start=1)}
    rows = read_rows(out) + read_rows(out, "validation")
    assert len(rows) == stats["rows_written"]
    for row in rows[:500]:
        ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
        assert row["num_tokens"] == len(ids) == len(labels)
        assert row["num_trainable_tokens"] == int((labels != -100).sum())
        trained = runtime.decode(ids[labels != -100])
        assert trained == " " + answers[row["source_line"]].strip() + "<｜end▁of▁sentence｜>"
        assert runtime.decode(ids).startswith("<｜begin▁of▁sentence｜><|USER|> ")


def test_glaive_chatml_end_to_end(tmp_path):
    out = tmp_path / "out"
    assert run("--input", DATA / "glaive_toolcall_en_demo.jsonl", "--output", out,
               "--template", "chatml", "--max-length", "1024") == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_read"] == 300 and stats["accounting"]["holds"]
    assert stats["duplicates"] > 0 and stats["rejected"] == 0
    assert stats["truncated_by_reason"].get("prompt_truncated", 0) >= 1
    rejected = [json.loads(line) for p in (out / "rejected").glob("*.jsonl")
                for line in p.read_text().splitlines()]
    assert len(rejected) == stats["duplicates"] + stats["dropped"]
    assert all(r["reason"] == "duplicate" and "same example_id" in r["detail"]
               for r in rejected if r["raw"] is None)
    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    rows = read_rows(out)
    assert max(r["num_tokens"] for r in rows) <= 1024
    tools = {i: json.loads(json.loads(line)["tools"] or "[]") for i, line in
             enumerate((DATA / "glaive_toolcall_en_demo.jsonl").read_text().splitlines(), start=1)}
    tool_call_rows = 0
    for row in rows:
        text = runtime.decode(row["input_ids"])
        has_tools = text.startswith("<｜begin▁of▁sentence｜><|im_start|>system\nYou can call")
        assert has_tools == bool(tools[row["source_line"]])
        trained = runtime.decode(np.array(row["input_ids"])[np.array(row["labels"]) != -100])
        tool_call_rows += "<tool_call>\n{\"name\":" in trained
        assert not row["truncated"] or row["num_tokens"] == 1024
    assert tool_call_rows > 100


def test_two_runs_are_byte_identical_whatever_the_input_order(tmp_path):
    inputs = [DATA / "alpaca_en_demo.jsonl", DATA / "v1_sft_demo.jsonl", DATA / "seed_examples.jsonl"]
    common = ["--template", "chatml", "--validation-fraction", "0.1", "--num-shards", "3"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert run(*[x for p in inputs for x in ("--input", p)], "--output", first, *common) == 0
    assert run(*[x for p in reversed(inputs) for x in ("--input", p)], "--output", second,
               *common) == 0
    digest = tree_digest(first)
    assert digest == tree_digest(second)
    # 3 train shards, and ceil(3 * 0.1) = 1 validation shard.
    assert len([k for k in digest if k.endswith(".parquet")]) == 4
    stats = json.loads((first / "stats.json").read_text())
    assert stats["records_read"] == 999 + 500 + 10 and stats["accounting"]["holds"]
    # Rerunning into the same directory replaces the previous run completely.
    assert run(*[x for p in inputs for x in ("--input", p)], "--output", first, *common) == 0
    assert tree_digest(first) == digest


def test_user_jinja_template_and_tokenizer_template(tmp_path, tokenizer_dir):
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{{ bos_token }}{% for m in messages %}### {{ m.role }}:\n"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}"
        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}")
    out = tmp_path / "file"
    assert run("--input", DATA / "alpaca_en_demo.jsonl", "--output", out, "--template",
               template) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["template"]["kind"] == "jinja" and manifest["tokenizer"]["added_tokens"] == []

    # The same template as the tokenizer's own chat template.
    tok_dir = tmp_path / "tok"
    shutil.copytree(tokenizer_dir[0], tok_dir)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = template.read_text()
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    out2 = tmp_path / "tok_out"
    assert run("--input", DATA / "alpaca_en_demo.jsonl", "--output", out2, "--tokenizer", tok_dir,
               "--template", "tokenizer") == 0
    assert [r["input_ids"] for r in read_rows(out)] == [r["input_ids"] for r in read_rows(out2)]
    row = read_rows(out)[0]
    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    text = runtime.decode(row["input_ids"])
    trained = runtime.decode(np.array(row["input_ids"])[np.array(row["labels"]) != -100])
    assert text.endswith("### assistant:\n" + trained + "\n")


@pytest.mark.parametrize("args,message", [
    (["--input", "nothing/*.jsonl"], "--input matched no files: nothing/*.jsonl"),
    (["--template", "nope"], "unknown --template 'nope'"),
    (["--template", "tokenizer"], "has no chat_template"),
    (["--tokenizer", "/no/such/tokenizer"], "cannot load --tokenizer '/no/such/tokenizer'"),
    (["--validation-fraction", "1.5"], "--validation-fraction must be in [0, 1)"),
    (["--map", "broken"], "--map expects NEW=OLD"),
    (["--min-trainable-tokens", "10", "--max-length", "5"], "--min-trainable-tokens must be below"),
])
def test_errors_are_one_clear_line(tmp_path, capsys, args, message):
    base = {"--input": str(DATA / "seed_examples.jsonl"), "--output": str(tmp_path / "out")}
    argv = [x for k, v in base.items() if k not in args for x in (k, v)] + args
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sftprep: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_output_that_is_not_ours_is_refused(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    assert run("--input", DATA / "seed_examples.jsonl", "--output", out) == 2
    assert "is not empty and holds no sftprep output" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_too_many_rejections_fail_the_run_without_a_manifest(tmp_path, capsys):
    """A failing run still writes stats.json and the report (that is when they are needed),
    then fails with one line; there is no manifest, so it is never taken for a complete run."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "completion": "fine"}\n{broken\n{"x": 1}\n')
    out = tmp_path / "out"
    assert run("--input", bad, "--output", out) == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sftprep:")]
    assert line.startswith("sftprep: run failed: 2 of 3 records rejected or dropped (66.7% > "
                           "--max-rejected-fraction 0.1); top reasons: ")
    assert "See report.html, stats.json and rejected/ of this run" in line
    assert not (out / "manifest.json").exists()
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["records_read"], stats["rows_written"], stats["rejected"]) == (3, 1, 2)
    assert stats["rejected_by_reason"] == {"invalid_json": 1, "unknown_format": 1}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "This run failed its final checks" in page
    assert html.escape(line[len("sftprep: run failed: "):]) in page
    assert sorted(p.name for p in (out / "report").iterdir()) == sorted(n for n, _ in report.PLOTS)
    assert run("--input", bad, "--output", out, "--max-rejected-fraction", "0.7") == 0
    assert "This run failed" not in (out / "report.html").read_text(encoding="utf-8")
    assert json.loads((out / "manifest.json").read_text())["stats_sha256"] == \
        hashlib.sha256((out / "stats.json").read_bytes()).hexdigest()
    rejected = sorted((json.loads(line) for p in (out / "rejected").glob("*.jsonl")
                       for line in p.read_text().splitlines()), key=lambda r: r["line"])
    assert [(r["line"], r["reason"], r["raw"]) for r in rejected] == [
        (2, "invalid_json", "{broken"), (3, "unknown_format", '{"x": 1}')]


def test_a_failed_published_run_leaves_latest_on_the_last_good_run(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "completion": "fine"}\n{broken\n')
    out = tmp_path / "out"
    assert run("--input", bad, "--output", out, "--publish", "--max-rejected-fraction", "0.5") == 0
    latest = (out / "LATEST").read_text()
    assert run("--input", bad, "--output", out, "--publish") == 1
    assert "1 of 2 records rejected or dropped" in capsys.readouterr().err
    assert (out / "LATEST").read_text() == latest
    good = out / json.loads(latest)["path"]
    [failed] = [p for p in (out / "runs").iterdir() if p != good]
    assert (good / "manifest.json").exists() and not (failed / "manifest.json").exists()
    assert json.loads((failed / "stats.json").read_text())["rejected_by_reason"] == {
        "invalid_json": 1}
    assert "This run failed its final checks" in (failed / "report.html").read_text()


def test_end_of_run_summary_and_truncation_by_source(tmp_path, capsys):
    """The summary's numbers, checked against what the inputs hold and the Parquet rows."""
    def record(prompt, completion):
        return json.dumps({"prompt": prompt, "completion": completion})

    long_prompt = " ".join(f"word{i}" for i in range(120))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join([
        record("What is 2+2?", "4"), record("Name a colour.", "Blue."),
        record("Say hi.", "Hi!"), record(long_prompt, "Done."),
        record("Again: " + long_prompt, "Done again."), record("What is 2+2?", "4"),
        "{broken", '{"x": 1}', "{also broken"]) + "\n")
    b.write_text("\n".join([record("Capital of France?", "Paris."), record("One more.", "Sure."),
                            record("B: " + long_prompt, "Finished.")]) + "\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run("--input", a, "--input", b, "--output", out, "--max-length", "64",
               "--max-rejected-fraction", "0.5") == 0
    lines = capsys.readouterr().out.splitlines()
    rows = read_rows(out)
    truncated = {"a.jsonl": 2, "b.jsonl": 1}
    assert {s: sum(r["truncated"] for r in rows if r["source"] == s) for s in truncated} == \
        truncated
    assert re.fullmatch(r"sftprep: read 12 records in \d+\.\ds; wrote 8 rows \(train 8\); "
                        r"rejected 3, dropped 0, duplicates 1, truncated 3", lines[0]), lines[0]
    assert lines[1] == "sftprep: not used, by reason: invalid_json 2, unknown_format 1"
    assert lines[2] == (f"sftprep: train tokens {sum(r['num_tokens'] for r in rows)}, "
                        f"trained {sum(r['num_trainable_tokens'] for r in rows)}")
    assert lines[3] == f"sftprep: output in {out} (manifest.json, stats.json, rejected/)"
    assert len(lines) == 4
    stats = json.loads((out / "stats.json").read_text())
    assert {s: e["truncated"] for s, e in stats["per_source"].items()} == truncated
    page = (out / "report.html").read_text(encoding="utf-8")
    cells = dict(re.findall(r'<tr><td><code>([^<]+)</code></td>((?:<td class="n">[\d,]+</td>){6})',
                            page))
    assert {s: re.findall(r">([\d,]+)<", c)[-1] for s, c in cells.items()} == {
        "a.jsonl": "2", "b.jsonl": "1"}


def test_config_file_with_flag_override(tmp_path):
    config = tmp_path / "sftprep.yaml"
    config.write_text(f"input: [{DATA / 'gsm8k_train.jsonl'}]\nmap: [prompt=question, "
                      f"completion=answer]\ntemplate: chatml\nmax-length: 64\n")
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join((DATA / "gsm8k_train.jsonl").read_text().splitlines()[:30]) + "\n")
    out = tmp_path / "out"
    assert run("--config", config, "--input", small, "--output", out, "--max-length", "128") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["inputs"] == [str(small)]  # the flag replaced the file's list
    assert manifest["config"]["max_length"] == 128 and manifest["config"]["template"] == "chatml"
    assert manifest["config"]["field_map"] == ["prompt=question", "completion=answer"]


def test_a_manifest_reruns_its_run(tmp_path):
    """--config OUT/manifest.json repeats a run as it was; flags still override it."""
    first = tmp_path / "first"
    assert run("--input", DATA / "seed_examples.jsonl", "--output", first, "--template", "chatml",
               "--max-length", "300", "--validation-fraction", "0.2", "--seed", "7") == 0
    again = tmp_path / "again"
    assert run("--config", first / "manifest.json", "--output", again) == 0
    assert tree_digest(again) == tree_digest(first)
    config = json.loads((again / "manifest.json").read_text())["config"]
    assert config == {**json.loads((first / "manifest.json").read_text())["config"],
                      "output": str(again)}


def test_console_script_runs_the_readme_example(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "sftprep", "run", "--input", str(DATA / "seed_examples.jsonl"),
         "--output", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "read 10 records" in result.stdout and "wrote 10 rows" in result.stdout
    assert (out / "manifest.json").exists()


def test_worker_processes_do_not_change_a_byte(tmp_path):
    """Two worker processes (and input split into many byte ranges) give the same bytes."""
    data = tmp_path / "gsm8k_3000.jsonl"
    data.write_text("\n".join((DATA / "gsm8k_train.jsonl").read_text().splitlines()[:3000]) + "\n")
    common = ["--input", data, "--map", "prompt=question", "--map", "completion=answer",
              "--num-shards", "2", "--validation-fraction", "0.1"]
    assert run(*common, "--output", tmp_path / "one") == 0
    assert run(*common, "--output", tmp_path / "two", "--range-bytes", "65536",
               "--direct_num_workers", "2", "--direct_running_mode", "multi_processing") == 0
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")


def test_the_fast_bpe_engine_does_not_change_a_byte(tmp_path, monkeypatch):
    """Ids from the fast BPE engine (the default tokenizer's batches) are the tokenizer's."""
    inputs = ["--input", DATA / "alpaca_en_demo.jsonl", "--input", DATA / "glaive_toolcall_en_demo.jsonl"]
    assert run(*inputs, "--template", "chatml", "--output", tmp_path / "engine") == 0
    monkeypatch.setenv("SFTPREP_BPE_ENGINE", "tokenizers")
    assert run(*inputs, "--template", "chatml", "--output", tmp_path / "tokenizer") == 0
    assert tree_digest(tmp_path / "engine") == tree_digest(tmp_path / "tokenizer")


def test_local_runs_fork_a_process_per_core(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    from sftprep.pipeline import beam_job
    from sftprep.pipeline import run as run_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    big = run_module.FORKED_LOCAL_BYTES
    assert run_module.local_processes(0, big - 1, "out") == 0  # small: all in one process
    assert run_module.local_processes(0, big, "out") == 4
    assert run_module.local_processes(3, 10, "out") == 3  # --local-processes stands
    assert run_module.local_processes(1, big, "out") == 0
    assert run_module.local_processes(0, big, "gs://bucket/out") == 0
    # Beam's own worker processes only where fork is missing, and never over the user's choice.
    assert beam_job.local_parallelism([], 1 << 30) == []
    monkeypatch.setattr(run_module, "can_fork", lambda: False)
    monkeypatch.setattr(beam_job, "can_fork", lambda: False)
    assert run_module.local_processes(0, big, "out") == 0
    auto = beam_job.local_parallelism([], beam_job.PARALLEL_LOCAL_BYTES)
    assert auto == ["--direct_num_workers", "4", "--direct_running_mode", "multi_processing"]
    for chosen in (["--runner", "DataflowRunner"], ["--direct_num_workers=1"],
                   ["--direct_running_mode", "in_memory"]):
        assert beam_job.local_parallelism(chosen, 1 << 30) == []  # the user's choice stands
    # 8 ranges a worker, between 1 MiB and 16 MiB; one process keeps 16 MiB ranges.
    assert beam_job.range_bytes(0, PipelineOptions(auto), 256 << 20) == 8 << 20
    assert beam_job.range_bytes(0, PipelineOptions(auto), 1 << 30) == 16 << 20
    assert beam_job.range_bytes(0, PipelineOptions(auto), 8 << 20) == 1 << 20
    assert beam_job.range_bytes(0, PipelineOptions([]), 1 << 30) == 16 << 20
    assert beam_job.range_bytes(65536, PipelineOptions(auto), 1 << 30) == 65536  # --range-bytes


def test_forked_and_beam_worker_processes_give_the_one_process_bytes(tmp_path, monkeypatch):
    """The same files from one process and from several, on either engine: Beam's in-process
    runner alone, inline alone, inline forking children (ranges and shards), Beam forking
    children (batches and shards), Beam's own worker processes. Three shards and a validation
    split, so several shards are written at once. The forked runs hold at most 2,000 tokens in
    their shard buffers (pieces written early, as a run with many shards does), Beam's workers
    the default."""
    from sftprep.pipeline.prepare import ShardPieces

    flushed = []
    write = ShardPieces._write
    monkeypatch.setattr("sftprep.pipeline.prepare.BUFFERED_TOKENS", 2000)
    monkeypatch.setattr(ShardPieces, "_write",
                        lambda self, key, rows: flushed.append(key) or write(self, key, rows))
    data = tmp_path / "gsm8k_2000.jsonl"
    data.write_text("\n".join((DATA / "gsm8k_train.jsonl").read_text().splitlines()[:2000]) + "\n")
    common = ["--input", data, "--map", "prompt=question", "--map", "completion=answer",
              "--num-shards", "3", "--validation-fraction", "0.1", "--batch-size", "128"]
    assert run(*common, "--output", tmp_path / "one", "--local-processes", "1",
               "--local-engine", "beam") == 0
    assert len(flushed) > 32  # pieces written as batches arrive: 16 batches, ~19k tokens each
    assert run(*common, "--output", tmp_path / "inline", "--local-engine", "inline") == 0
    assert run(*common, "--output", tmp_path / "forked", "--local-processes", "2",
               "--range-bytes", "65536") == 0  # inline (auto), 22 ranges
    assert run(*common, "--output", tmp_path / "beam_forked", "--local-processes", "2",
               "--local-engine", "beam") == 0
    assert run(*common, "--output", tmp_path / "beam", "--direct_num_workers", "2",
               "--direct_running_mode", "multi_processing") == 0
    digests = {name: tree_digest(tmp_path / name)
               for name in ("one", "inline", "forked", "beam_forked", "beam")}
    assert all(found == digests["one"] for found in digests.values()), digests
    shards = sorted(p.name for p in (tmp_path / "forked" / "train").iterdir())
    assert len(shards) == 3


def test_crossing_tokens_reaches_the_run(tmp_path):
    """`--crossing-tokens` through `sftprep run`, with TRL's Llama 3 template and the default
    tokenizer (which does not know `<|eot_id|>`, so `|><|` crosses the end of each answer): train
    writes the tokenizer's ids of the whole text; split writes the same text cut at the edges,
    and the manifest records which."""
    trl = pytest.importorskip("trl")
    template = pathlib.Path(trl.__file__).parent / "chat_templates" / "llama3.jinja"
    data = tmp_path / "glaive.jsonl"
    data.write_text("".join((DATA / "glaive_toolcall_en_demo.jsonl").open().readlines()[:20]))
    rows = {}
    for crossing in ("train", "split"):
        out = tmp_path / crossing
        assert run("--input", str(data), "--output", str(out), "--template", str(template),
                   "--crossing-tokens", crossing) == 0
        config = json.loads((out / "manifest.json").read_text())["config"]
        assert config["crossing_tokens"] == crossing
        rows[crossing] = read_rows(out)
    runtime = TokenizerRuntime.from_file(str(tmp_path / "train" / "tokenizer" / "tokenizer.json"))
    differ = 0
    for whole, cut in zip(rows["train"], rows["split"]):
        assert whole["example_id"] == cut["example_id"]
        text = runtime.decode(whole["input_ids"])
        assert runtime.decode(cut["input_ids"]) == text
        assert whole["input_ids"] == runtime.tokenizer.encode(text, add_special_tokens=False).ids
        differ += whole["input_ids"] != cut["input_ids"]
    assert len(rows["train"]) >= 15 and differ >= len(rows["train"]) // 2

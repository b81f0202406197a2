"""Reasoning from input records through a stock template that rewrites history (Qwen3, from
TRL's wheel), end to end: each input form gives the same rows, and each --rewritten-turns policy
trains what it says, through `sftprep run` and `sftprep inspect`."""

from __future__ import annotations

import json
import pathlib

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from sftprep.cli import main

Q1, Q2 = "How many legs do 3 spiders have?", "And 2 ants?"
R1, A1 = "A spider has 8 legs, so 3 have 24.", "24"
R2, A2 = "An ant has 6 legs, so 2 have 12.", "12"


def _records():
    """The same dialogue in the three accepted reasoning forms."""
    fields = {"messages": [
        {"role": "user", "content": Q1}, {"role": "assistant", "content": A1, "reasoning_content": R1},
        {"role": "user", "content": Q2}, {"role": "assistant", "content": A2, "reasoning_content": R2}]}
    parts = {"messages": [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": [{"type": "reasoning", "value": R1}, {"type": "text", "value": A1}]},
        {"role": "user", "content": Q2},
        {"role": "assistant", "content": [{"type": "thinking", "text": R2}, {"type": "text", "text": A2}]}]}
    think = {"conversations": [
        {"from": "human", "value": Q1}, {"from": "gpt", "value": f"<think>{R1}</think>{A1}"},
        {"from": "human", "value": Q2}, {"from": "gpt", "value": f"<think>\n{R2}\n</think>\n\n{A2}"}]}
    return [fields, parts, think]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("reasoning")
    qwen3 = pathlib.Path(pytest.importorskip("trl").__file__).parent / "chat_templates" / "qwen3.jinja"
    (base / "qwen3.jinja").write_text(qwen3.read_text())
    (base / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return base


def _trained_texts(out: pathlib.Path):
    tokenizer = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    table = pq.read_table(out / "train" / "part-00000-of-00001.parquet")
    texts = []
    for ids, labels, line in zip(table.column("input_ids").to_pylist(),
                                 table.column("labels").to_pylist(),
                                 table.column("source_line").to_pylist()):
        trained = [i for i, label in zip(ids, labels) if label != -100]
        texts.append((line, tokenizer.decode(trained, skip_special_tokens=False)))
    return sorted(texts)


@pytest.mark.parametrize("policy,rows_per_record", [("last", 1), ("split", 2), ("as_rendered", 1)])
def test_each_policy_through_sftprep_run(inputs, tmp_path, policy, rows_per_record):
    out = tmp_path / "out"
    assert main(["run", "--input", str(inputs / "data.jsonl"), "--output", str(out),
                 "--template", str(inputs / "qwen3.jinja"), "--rewritten-turns", policy,
                 "--progress", "never"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    # The three forms normalize to one conversation: written once, the others are duplicates.
    assert stats["records_read"] == 3 and stats["duplicates"] == 2 * rows_per_record
    assert stats["rows_written"] == rows_per_record and stats["accounting"]["holds"]
    texts = [text for _, text in _trained_texts(out)]
    last = f"<think>\n{R2}\n</think>\n\n{A2}<|im_end|>"
    if policy == "last":
        assert [t.rstrip("\n") for t in texts] == [last]
    elif policy == "split":
        first = f"<think>\n{R1}\n</think>\n\n{A1}<|im_end|>"
        assert sorted(t.rstrip("\n") for t in texts) == sorted([first, last])
    else:  # as_rendered: the first answer as the template re-renders it, without its reasoning
        assert R1 not in texts[0] and A1 in texts[0] and last in texts[0]


def test_reasoning_is_shown_by_inspect(inputs, capsys):
    assert main(["inspect", "--input", str(inputs / "data.jsonl"), "--template",
                 str(inputs / "qwen3.jinja"), "--no-color", "--n", "3"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("data.jsonl:") == 3 and "spider" in shown and "think" in shown

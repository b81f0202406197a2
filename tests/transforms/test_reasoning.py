"""Reasoning on assistant turns (issue 14, item 4): every input form, the built-in templates'
`<think>` block, mask parity over it, `--reasoning drop`, and `sftprep run` / `inspect` end to end.

The records are real: GSM8K questions whose worked answer is split at `####` into the
reasoning and a short final answer, written in each form the parser accepts.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import Conversation, RawRecord, Rejection
from sftprep.transforms.templates import CHATML_END
from tests.conftest import DATA, spec_for

FORMS = ("reasoning_content", "reasoning", "reasoning_part", "thinking_part_value", "think_tag")


def gsm8k(limit=30):
    """(question, reasoning, answer) of the first GSM8K records."""
    out = []
    for line in (DATA / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:limit]:
        record = json.loads(line)
        reasoning, _, final = record["answer"].partition("####")
        out.append((record["question"], reasoning.strip(), f"The answer is {final.strip()}."))
    return out


def assistant_turn(form, reasoning, answer):
    if form in ("reasoning_content", "reasoning"):
        return {"role": "assistant", form: reasoning, "content": answer}
    if form == "reasoning_part":  # the OpenAI-style part, text under "text"
        return {"role": "assistant", "content": [{"type": "reasoning", "text": reasoning},
                                                 {"type": "text", "text": answer}]}
    if form == "thinking_part_value":  # LLaMA-Factory's form: text under "value"
        return {"role": "assistant", "content": [{"type": "thinking", "value": reasoning},
                                                 {"type": "text", "value": answer}]}
    return {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}


def raw(obj, line=1):
    return RawRecord("r.jsonl", line, json.dumps(obj, ensure_ascii=False))


def conversation(obj, **kwargs) -> Conversation:
    result = normalize_conversation(parse_record(raw(obj)), **kwargs)
    assert isinstance(result, Conversation), result
    return result


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_conversation(form):
    for question, reasoning, answer in gsm8k(10):
        conv = conversation({"messages": [{"role": "user", "content": question},
                                          assistant_turn(form, reasoning, answer)]})
        user, assistant = conv.messages
        assert (user.content, user.reasoning) == (question, "")
        assert (assistant.content, assistant.reasoning) == (answer, reasoning)
        same = conversation({"messages": [{"role": "user", "content": question},
                                          assistant_turn("reasoning_content", reasoning, answer)]})
        assert conv.example_id() == same.example_id()


def test_think_tag_in_completions_of_other_dialects():
    question, reasoning, answer = gsm8k(1)[0]
    tagged = f"  <think>{reasoning}</think>{answer}"
    for obj in ({"prompt": question, "completion": tagged},
                {"instruction": question, "output": tagged},
                {"conversations": [{"from": "human", "value": question},
                                   {"from": "gpt", "value": tagged}]}):
        assistant = conversation(obj).messages[-1]
        assert (assistant.content, assistant.reasoning) == (answer, reasoning)


@pytest.mark.parametrize("obj,reason", [
    ({"messages": [{"role": "user", "content": [{"type": "reasoning", "text": "r"}]},
                   {"role": "assistant", "content": "a"}]}, "unsupported_content"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "reasoning_content": 3}]}, "wrong_type"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": [{"type": "thinking"}]}]}, "wrong_type"),
])
def test_reasoning_defects_are_rejections(obj, reason):
    result = parse_record(raw(obj))
    assert isinstance(result, Rejection) and result.reason == reason, result


def test_where_reasoning_is_not_taken():
    conv = conversation({"messages": [
        {"role": "user", "content": "<think>x</think> q", "reasoning_content": "ignored"},
        {"role": "assistant", "content": "<think>never closed"}]})
    assert [(m.content, m.reasoning) for m in conv.messages] == [
        ("<think>x</think> q", ""), ("<think>never closed", "")]


def test_reasoning_only_turns_and_drop():
    obj = {"messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "reasoning_content": "thinking", "content": None}]}
    assert conversation(obj).messages[1].reasoning == "thinking"
    assert normalize_conversation(parse_record(raw(obj)), reasoning="drop")[0] == "empty_content"
    dropped = conversation({"messages": [{"role": "user", "content": "q"},
                                         assistant_turn("think_tag", " r\r\n", "a")]},
                           reasoning="drop")
    assert [(m.content, m.reasoning) for m in dropped.messages[1:]] == [("a", "")]
    kept = conversation({"messages": [{"role": "user", "content": "q"},
                                      assistant_turn("reasoning", " r\r\n\x00x ", "a")]})
    assert kept.messages[1].reasoning == "r\nx"  # normalized like content


OPENING = {"markers": " ", "chatml": "", "separator": ""}


def closing(template, info):
    return CHATML_END if template == "chatml" else info.eos


def trained_runs(runtime, example):
    trained = example.labels != -100
    assert np.array_equal(example.labels[trained], example.input_ids[trained])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], trained.astype(np.int8), [0]])))
    return [runtime.decode(example.input_ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]


def think(reasoning, answer):
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


@pytest.mark.parametrize("template", ["markers", "chatml", "separator"])
@pytest.mark.parametrize("form", FORMS)
def test_mask_parity_covers_the_reasoning(runtime, token_info, template, form):
    """Decoding the trained tokens gives `<think>\\n…\\n</think>\\n\\n` + answer + closing token."""
    data = gsm8k(30)
    records = [raw({"messages": [{"role": "user", "content": q}, assistant_turn(form, r, a)]},
                   line) for line, (q, r, a) in enumerate(data, start=1)]
    settings = PrepareSettings(template=spec_for(template, token_info), max_length=100_000)
    batch = prepare_batch(records, settings, runtime)
    assert len(batch.examples) == len(data) and not batch.rejected
    for example in batch.examples:
        _, reasoning, answer = data[example.source_line - 1]
        assert trained_runs(runtime, example) == [
            OPENING[template] + think(reasoning, answer) + closing(template, token_info)]


@pytest.mark.parametrize("template", ["markers", "chatml"])
def test_two_turn_dialogues_train_both_reasonings(runtime, token_info, template):
    data = gsm8k(20)
    records = []
    for line, index in enumerate(range(0, 20, 2), start=1):
        (q1, r1, a1), (q2, r2, a2) = data[index], data[index + 1]
        records.append(raw({"messages": [
            {"role": "system", "content": "Think step by step."},
            {"role": "user", "content": q1}, assistant_turn("reasoning_part", r1, a1),
            {"role": "user", "content": q2}, assistant_turn("think_tag", r2, a2)]}, line))
    settings = PrepareSettings(template=spec_for(template, token_info), max_length=100_000)
    batch = prepare_batch(records, settings, runtime)
    assert len(batch.examples) == 10
    for example in batch.examples:
        (_, r1, a1), (_, r2, a2) = data[2 * example.source_line - 2: 2 * example.source_line]
        end = closing(template, token_info)
        assert trained_runs(runtime, example) == [
            OPENING[template] + think(r1, a1) + end, OPENING[template] + think(r2, a2) + end]


@pytest.mark.parametrize("template", ["markers", "chatml", "separator"])
def test_drop_gives_the_tokens_of_the_record_without_reasoning(runtime, token_info, template):
    data = gsm8k(20)
    with_reasoning = [raw({"messages": [{"role": "user", "content": q},
                                        assistant_turn("reasoning_part", r, a)]}, line)
                      for line, (q, r, a) in enumerate(data, start=1)]
    plain = [raw({"messages": [{"role": "user", "content": q},
                               {"role": "assistant", "content": a}]}, line)
             for line, (q, _, a) in enumerate(data, start=1)]
    spec = spec_for(template, token_info)
    dropped = prepare_batch(with_reasoning, PrepareSettings(template=spec, reasoning="drop"),
                            runtime).examples
    expected = prepare_batch(plain, PrepareSettings(template=spec), runtime).examples
    assert [(e.example_id, e.input_ids.tolist(), e.labels.tolist()) for e in dropped] == \
        [(e.example_id, e.input_ids.tolist(), e.labels.tolist()) for e in expected]
    kept = prepare_batch(with_reasoning, PrepareSettings(template=spec), runtime).examples
    assert all(k.example_id != e.example_id and len(k.input_ids) > len(e.input_ids)
               for k, e in zip(kept, expected))


def write_reasoning_file(path, template):
    """Four records, one per input form family; dialogues only where the template takes them."""
    data = gsm8k(8)
    lines = []
    for index, form in enumerate(("reasoning_content", "reasoning_part", "thinking_part_value",
                                  "think_tag")):
        q, r, a = data[index]
        messages = [{"role": "user", "content": q}, assistant_turn(form, r, a)]
        if template != "separator" and index == 3:
            q2, r2, a2 = data[index + 4]
            messages += [{"role": "user", "content": q2},
                         assistant_turn("reasoning_content", r2, a2)]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = {1: [think(*data[0][1:])], 2: [think(*data[1][1:])], 3: [think(*data[2][1:])],
                4: [think(*data[3][1:])] + ([] if template == "separator"
                                            else [think(*data[7][1:])])}
    return expected


@pytest.mark.parametrize("template", ["markers", "chatml", "separator"])
def test_run_and_inspect_end_to_end(tmp_path, capsys, template):
    from sftprep.pipeline.run import main as run_main
    from sftprep.tokenizer.runtime import TokenizerRuntime
    from sftprep.views import inspect as view
    from sftprep.views.inspect_cli import main as inspect_main

    source = tmp_path / "reasoning.jsonl"
    expected = write_reasoning_file(source, template)
    out = tmp_path / "out"
    assert run_main(["--input", str(source), "--output", str(out), "--template", template]) == 0
    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    rows = {row["source_line"]: row for path in sorted((out / "train").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()}
    stats = json.loads((out / "stats.json").read_text())
    assert sorted(rows) == [1, 2, 3, 4] and stats["rejected"] == 0
    end = CHATML_END if template == "chatml" else runtime.decode(
        [rows[1]["input_ids"][-1]])  # the EOS the run's tokenizer closes turns with
    for line, row in rows.items():
        ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
        trained = labels != -100
        edges = np.flatnonzero(np.diff(np.concatenate([[0], trained.astype(np.int8), [0]])))
        runs = [runtime.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]
        assert runs == [OPENING[template] + text + end for text in expected[line]], line

    capsys.readouterr()
    assert inspect_main(["--input", str(source), "--template", template, "--no-color",
                         "--n", "4"]) == 0
    shown = capsys.readouterr().out
    marks = (view.BOUNDARY, view.SPECIAL_OPEN, view.SPECIAL_CLOSE, view.NEWLINE_MARK)
    blocks = shown.split("\n#")[1:]
    assert len(blocks) == 4
    for line, block in zip(sorted(rows), blocks):
        runs = re.findall(r"⟦(.*?)⟧", block, flags=re.S)
        for mark in marks:
            runs = [run.replace(mark, "") for run in runs]
        assert runs == [OPENING[template] + text + end for text in expected[line]], line

    dropped_out = tmp_path / "dropped"
    assert run_main(["--input", str(source), "--output", str(dropped_out), "--template",
                     template, "--reasoning", "drop"]) == 0
    dropped = {row["source_line"]: row for path in sorted((dropped_out / "train").glob("*.parquet"))
               for row in pq.read_table(path).to_pylist()}
    for line, row in dropped.items():
        text = runtime.decode(row["input_ids"])
        assert "<think>" not in text and len(row["input_ids"]) < len(rows[line]["input_ids"])

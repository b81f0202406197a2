"""Mask parity on every real data file, for every template: decoding the trained tokens of each
example gives back exactly the assistant text the template rendered, plus the closing token.

The expected strings are built here from the normalized conversation, independently of the
template code, so a wrong span in a template fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.prepare import PrepareSettings, conversation_of, prepare_batch
from sftprep.transforms.records import Conversation, Rejection
from sftprep.transforms.templates import CHATML_END, TemplateSpec
from tests.conftest import read_records, spec_for

GSM8K_MAP = (("prompt", "question"), ("completion", "answer"))
FILES = [
    ("seed_examples.jsonl", ()),
    ("gsm8k_train.jsonl", GSM8K_MAP),
    ("alpaca_en_demo.jsonl", ()),
    ("glaive_toolcall_en_demo.jsonl", ()),
    ("v1_sft_demo.jsonl", ()),
]

# A user-style ChatML Jinja template with generation blocks, as a tokenizer or --template file
# would carry it.
CHATML_JINJA = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% for c in m.tool_calls or [] %}{% if m.content or not loop.first %}\n{% endif %}"
    "<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "\n</tool_call>{% endfor %}<|im_end|>{% endgeneration %}\n"
    "{% else %}{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
)


def assistant_expected(message) -> str:
    calls = "\n".join(
        "<tool_call>\n" + json.dumps({"name": c.name, "arguments": json.loads(c.arguments)},
                                     ensure_ascii=False) + "\n</tool_call>"
        for c in message.tool_calls)
    return "\n".join(p for p in (message.content, calls) if p)


def expected_runs(conv: Conversation, template: str, eos: str, train_on: str):
    opening, closing = {"markers": (" ", eos), "chatml": ("", CHATML_END),
                        "separator": ("", eos), "jinja": ("", CHATML_END)}[template]
    turns = [m for m in conv.messages if m.role == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    return [opening + assistant_expected(m) + closing for m in turns if m.trainable is not False]


def trained_runs(runtime, input_ids: np.ndarray, labels: np.ndarray):
    trained = labels != -100
    assert np.array_equal(labels[trained], input_ids[trained])
    runs, start = [], None
    for index, flag in enumerate(list(trained) + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append(runtime.decode(input_ids[start:index]))
            start = None
    return runs


def settings_for(template: str, info, field_map=(), train_on="all_assistant"):
    spec = (TemplateSpec("jinja", bos=info.bos, eos=info.eos, source=CHATML_JINJA)
            if template == "jinja" else spec_for(template, info))
    return PrepareSettings(template=spec, field_map=field_map, train_on=train_on,
                           max_length=1_000_000)


@pytest.mark.parametrize("template", ["markers", "chatml", "separator", "jinja"])
@pytest.mark.parametrize("name,field_map", FILES, ids=[f for f, _ in FILES])
def test_trained_tokens_decode_to_assistant_text(runtime, token_info, name, field_map, template):
    records = read_records(name, limit=2000)
    settings = settings_for(template, token_info, field_map)
    batch = prepare_batch(records, settings, runtime)
    by_line = {r.line: r for r in records}
    assert batch.examples, "no example was produced"
    for reason in {r.reason for r in batch.rejected}:
        # Only the separator template refuses data: dialogues are not single-turn.
        assert template == "separator" and reason == "template_error", reason
    for example in batch.examples:
        conv = normalize_conversation(parse_record(by_line[example.source_line], None, field_map))
        assert len(example.input_ids) == len(example.labels)
        runs = trained_runs(runtime, example.input_ids, example.labels)
        assert runs == expected_runs(conv, template, token_info.eos, "all_assistant"), \
            f"{name}:{example.source_line}"
    accounted = len(batch.examples) + len(batch.rejected) + len(batch.dropped)
    assert accounted == len(records)


@pytest.mark.parametrize("template", ["markers", "chatml"])
def test_whole_sequence_decodes_to_rendered_text(runtime, token_info, template):
    records = read_records("glaive_toolcall_en_demo.jsonl", limit=200)
    settings = settings_for(template, token_info, train_on="all")
    batch = prepare_batch(records, settings, runtime)
    by_line = {r.line: r for r in records}
    for example in batch.examples:
        conv, rendered = conversation_of(by_line[example.source_line], settings)
        assert runtime.decode(example.input_ids) == rendered.text
        assert np.array_equal(example.labels, example.input_ids)  # --train-on all


def test_last_assistant_trains_only_the_final_turn(runtime, token_info):
    records = read_records("glaive_toolcall_en_demo.jsonl", limit=100)
    settings = settings_for("chatml", token_info, train_on="last_assistant")
    batch = prepare_batch(records, settings, runtime)
    by_line = {r.line: r for r in records}
    multi_turn = 0
    for example in batch.examples:
        conv = normalize_conversation(parse_record(by_line[example.source_line]))
        expected = expected_runs(conv, "chatml", token_info.eos, "last_assistant")
        assert trained_runs(runtime, example.input_ids, example.labels) == expected
        multi_turn += sum(m.role == "assistant" for m in conv.messages) > 1
    assert multi_turn > 50


def test_no_duplicated_bos(runtime, token_info):
    records = read_records("alpaca_en_demo.jsonl", limit=50)
    for template in ("markers", "chatml", "separator", "jinja"):
        batch = prepare_batch(records, settings_for(template, token_info), runtime)
        for example in batch.examples:
            assert example.input_ids[0] == runtime.bos_id
            assert example.input_ids[1] != runtime.bos_id


def test_prompt_markers_are_context_and_completion_is_trained(runtime, token_info):
    # seed line 4: two user turns and an assistant turn inside the prompt, then the completion.
    [record] = [r for r in read_records("seed_examples.jsonl") if r.line == 4]
    batch = prepare_batch([record], settings_for("markers", token_info), runtime)
    [example] = batch.examples
    runs = trained_runs(runtime, example.input_ids, example.labels)
    assert runs == [" Tomorrow's forecast for London is partly sunny with a high of 18°C."
                    + token_info.eos]
    text = runtime.decode(example.input_ids)
    assert text.count("<|USER|>") == 2 and text.count("<|ASSISTANT|>") == 2


def test_rejections_carry_reason_and_raw(runtime, token_info):
    from sftprep.transforms.records import RawRecord

    records = [RawRecord("x.jsonl", 1, '{"question": "q", "answer": "a"}'),
               RawRecord("x.jsonl", 2, "{not json")]
    batch = prepare_batch(records, settings_for("markers", token_info), runtime)
    assert [(r.line, r.reason) for r in batch.rejected] == [(1, "unknown_format"), (2, "invalid_json")]
    assert all(isinstance(r, Rejection) and r.raw for r in batch.rejected)

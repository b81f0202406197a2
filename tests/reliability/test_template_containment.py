"""Hostile data and hostile templates stay contained: no trained span from data, one record's
failure rejects that record only, and rendering has a time and size budget."""

from __future__ import annotations

import json
import time

import pytest

from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord
from sftprep.transforms.templates import TemplateSpec, render

# A ChatML template with generation blocks that renders every string field of the data.
GEN_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</tool_call>{% endfor %}<|im_end|>{% endgeneration %}\n"
    "{% else %}{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}")
ATTACK = "\x00<gen>\x00TRAINED ATTACK\x00</gen>\x00"
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up.",
                                            "parameters": {"type": "object"}}}]


def settings(source=GEN_TEMPLATE, **fields):
    return PrepareSettings(template=TemplateSpec("jinja", source=source, **fields),
                           max_length=100_000)


def record(messages, tools=None, line=1):
    body = {"messages": messages}
    if tools is not None:
        body["tools"] = tools
    return RawRecord("hostile.jsonl", line, json.dumps(body))


def forged(where: str):
    """A record carrying the old NUL-wrapped generation markers in one string field."""
    tools = json.loads(json.dumps(TOOLS))
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"q": "x"}}}
    user = {"role": "user", "content": "Hi"}
    assistant = {"role": "assistant", "content": "Fine.", "tool_calls": [call]}
    if where == "tools":
        tools[0]["function"]["description"] = ATTACK
    elif where == "user content":
        user["content"] = ATTACK
    elif where == "tool arguments":
        call["function"]["arguments"] = {"q": ATTACK}
    elif where == "tool name":
        call["function"]["name"] = ATTACK
    elif where == "reasoning":
        assistant["reasoning_content"] = ATTACK
    elif where == "system":
        return record([{"role": "system", "content": ATTACK}, user, assistant], tools)
    return record([user, assistant], tools)


@pytest.mark.parametrize("where", ["tools", "user content", "system", "tool arguments",
                                   "tool name", "reasoning"])
def test_data_cannot_forge_a_trained_span(where, runtime):
    batch = prepare_batch([forged(where)], settings(), runtime)
    for example in batch.examples:
        trained = runtime.decode(example.input_ids[example.labels != -100])
        text = runtime.decode(example.input_ids)
        # Whatever the field holds is trained only if it is part of the assistant's output.
        if where in ("tools", "user content", "system"):
            assert "TRAINED ATTACK" in text and "TRAINED ATTACK" not in trained
        assert trained.endswith("<|im_end|>") and "Hi" not in trained
    assert len(batch.examples) + len(batch.rejected) == 1


def test_control_tokens_in_every_field_stay_text(runtime):
    """A record spelling `<|im_end|>` in tools, arguments, names and reasoning: the template's
    own `<|im_end|>` tokens are the only special ones."""
    im_end = runtime.tokenizer.token_to_id("<|im_end|>")
    spec_settings = settings(control_tokens=tuple(runtime.special_strings))
    hostile = "x<|im_end|>y"
    tools = [{"type": "function", "function": {"name": "f", "description": hostile}}]
    call = {"type": "function", "function": {"name": "f", "arguments": {"q": hostile}}}
    rec = record([{"role": "user", "content": hostile},
                  {"role": "assistant", "content": hostile, "reasoning_content": hostile,
                   "tool_calls": [call]}], tools)
    [example] = prepare_batch([rec], spec_settings, runtime).examples
    # system, user, assistant: three turns, three real terminators
    assert int((example.input_ids == im_end).sum()) == 3


@pytest.mark.parametrize("source,reason,detail", [
    # A filter meeting a type it cannot take (the reported case was `arguments|items` on a
    # list; the parser now rejects non-object arguments as invalid_tool_call before rendering).
    ("{% for k, v in messages[1].content|items %}{{ k }}{% endfor %}",
     "template_error", "TypeError"),
    ("{% include 'other.jinja' %}", "template_error", "template error"),
    ("{{ range(10**6) | list }}", "template_error", "Range too big"),
    ("{{ range(10**10) | list }}", "template_limit", "limit"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "template_error", "recursion"),
])
def test_one_failing_record_rejects_that_record_only(source, reason, detail, runtime):
    source_all = "{% if messages[1].content == 'boom' %}" + source + "{% endif %}" + GEN_TEMPLATE
    good = record([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    bad = record([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "boom"}],
                 line=2)
    batch = prepare_batch([good, bad], settings(source_all), runtime)
    assert [e.source_line for e in batch.examples] == [1]
    [rejection] = batch.rejected
    assert (rejection.line, rejection.reason) == (2, reason)
    assert detail in rejection.detail


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**10 }}",
    "{{ 'x' | center(10**10) }}",
    "{{ 'x'.ljust(10**10) }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "{% for i in range(100000) %}{{ messages[0].content * 1000 }}{% endfor %}",
    "{{ 2 ** 100000000 }}",
])
def test_runaway_templates_hit_the_budget(source, runtime):
    good = record([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    began = time.monotonic()
    batch = prepare_batch([good], settings(source, render_seconds=1.0,
                                           render_max_chars=1_000_000), runtime)
    assert time.monotonic() - began < 30  # generous: does not hang
    [rejection] = batch.rejected
    assert rejection.reason == "template_limit", rejection.detail


def test_generation_block_inside_a_macro_is_refused_not_guessed():
    from sftprep.transforms.records import Conversation, Message
    from sftprep.transforms.templates import TemplateError

    source = ("{% macro a(m) %}[{% generation %}{{ m.content }}{% endgeneration %}]{% endmacro %}"
              "{% for m in messages %}{% if m.role == 'assistant' %}{{ a(m) }}{% else %}"
              "{{ m.content }}{% endif %}{% endfor %}")
    conv = Conversation((Message("user", "Hi"), Message("assistant", "Yo")))
    with pytest.raises(TemplateError, match="cannot locate"):
        render(conv, TemplateSpec("jinja", source=source))

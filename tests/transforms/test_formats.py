"""Parsing: the four dialects, field renames, and a reason code for every bad record."""

from __future__ import annotations

import pytest

from sftprep.transforms.formats import parse_record
from sftprep.transforms.records import RawRecord, Rejection


def parse(text, fmt=None, field_map=()):
    return parse_record(RawRecord("f.jsonl", 7, text), fmt, field_map)


def turns(conv):
    return [(m.role, m.content) for m in conv.messages]


@pytest.mark.parametrize("text,expected", [
    ('{"prompt": "P", "completion": "C"}', [("user", "P"), ("assistant", "C")]),
    ('{"instruction": "I", "input": "X", "output": "O"}', [("user", "I\n\nX"), ("assistant", "O")]),
    ('{"instruction": "I", "input": "", "output": "O", "system": "S", "history": [["q", "a"]]}',
     [("system", "S"), ("user", "q"), ("assistant", "a"), ("user", "I"), ("assistant", "O")]),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]},'
     ' {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]}',
     [("user", "hi"), ("assistant", "yo")]),
    ('{"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}],'
     ' "system": "s"}', [("system", "s"), ("human", "h"), ("gpt", "g")]),
])
def test_dialects_are_detected_and_parsed(text, expected):
    conv = parse(text)
    assert turns(conv) == expected
    assert (conv.source, conv.line) == ("f.jsonl", 7)


def test_field_map_and_forced_format():
    conv = parse('{"question": "Q", "answer": "A"}',
                 field_map=(("prompt", "question"), ("completion", "answer")))
    assert turns(conv) == [("user", "Q"), ("assistant", "A")]
    assert conv.dialect == "prompt_completion"
    forced = parse('{"prompt": "P", "completion": "C", "messages": 3}', fmt="prompt_completion")
    assert turns(forced) == [("user", "P"), ("assistant", "C")]


def test_tool_calls_from_sharegpt_and_openai():
    sharegpt = parse('{"conversations": [{"from": "human", "value": "h"}, {"from": "function_call",'
                     ' "value": "{\\"name\\": \\"f\\", \\"arguments\\": {\\"a\\": 1}}"},'
                     ' {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "done"}],'
                     ' "tools": "[{\\"name\\": \\"f\\"}]"}')
    assert [m.role for m in sharegpt.messages] == ["human", "assistant", "observation", "gpt"]
    assert sharegpt.messages[1].tool_calls[0].name == "f"
    assert sharegpt.tools == '[{"name": "f"}]'
    openai = parse('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant",'
                   ' "content": null, "tool_calls": [{"type": "function", "function":'
                   ' {"name": "g", "arguments": "{\\"x\\": 2}"}}]}, {"role": "tool", "content": "r"},'
                   ' {"role": "assistant", "content": "ok"}]}')
    assert openai.messages[1].tool_calls[0].arguments == '{"x": 2}'


@pytest.mark.parametrize("tools", ['"[]"', "[]", '""', "null"])
def test_empty_tool_lists_mean_no_tools(tools):
    conv = parse('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant",'
                 f' "content": "a"}}], "tools": {tools}}}')
    assert conv.tools == ""


def test_loss_weight_marks_untrainable_turns():
    conv = parse('{"messages": [{"role": "user", "content": "u", "loss_weight": 0.0},'
                 ' {"role": "assistant", "content": "a", "loss_weight": 0.0},'
                 ' {"role": "user", "content": "u2"}, {"role": "assistant", "content": "b",'
                 ' "loss_weight": 1.0}]}')
    assert [m.trainable for m in conv.messages] == [False, False, None, True]


@pytest.mark.parametrize("text,reason", [
    ("{oops", "invalid_json"),
    ('{"prompt": NaN, "completion": "c"}', "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ('{"foo": 1}', "unknown_format"),
    ('{"prompt": 3, "completion": "c"}', "wrong_type"),
    ('{"prompt": "p", "completion": null}', "missing_field"),
    ('{"messages": "nope"}', "wrong_type"),
    ('{"messages": [{"content": "x"}]}', "missing_field"),
    ('{"messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]}',
     "unsupported_content"),
    ('{"conversations": [{"from": "function_call", "value": "not json"}]}', "invalid_tool_call"),
    ('{"instruction": "i", "output": "o", "history": [["only one"]]}', "wrong_type"),
    ("[" * 100000 + "]" * 100000, "invalid_json"),
])
def test_bad_records_are_rejected_with_a_reason(text, reason):
    result = parse(text)
    assert isinstance(result, Rejection)
    assert result.reason == reason, result.detail
    assert (result.source, result.line, result.raw) == ("f.jsonl", 7, text)
    assert result.detail


def test_reader_errors_pass_through():
    result = parse_record(RawRecord("f.jsonl", 3, "\ufffd", error="invalid_utf8", detail="byte 0"))
    assert (result.reason, result.detail, result.raw) == ("invalid_utf8", "byte 0", "\ufffd")

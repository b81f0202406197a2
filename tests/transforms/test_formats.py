"""Parsing: the four dialects, field renames, and a reason code for every bad record."""

from __future__ import annotations

import json

import pytest

from sftprep.transforms.formats import detect_format, parse_record
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


@pytest.mark.parametrize("record,dialect", [
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
    ({"messages": [], "rejected": 1}, "preference"),
    ({"chosen": "c"}, "preference"),
    ({"messages": [], "conversations": []}, "messages"),
    ({"conversations": [], "instruction": "i", "output": "o"}, "sharegpt"),
    ({"instruction": "i", "output": "o", "prompt": "p", "completion": "c"}, "alpaca"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
])
def test_detect_format_follows_the_documented_order(record, dialect):
    # docs/formats.md: chosen or rejected, messages, conversations, instruction+output, then
    # prompt+completion.
    assert detect_format(record) == dialect


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


TOOLS = '[{"type": "function", "function": {"name": "get_weather"}}, {"name": "search"}]'


def call_record(arguments_json: str, name="get_weather", tools=TOOLS):
    """A messages record whose one assistant turn calls `name` with `arguments_json`."""
    tools_field = f', "tools": {tools}' if tools is not None else ""
    return ('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", '
            f'"content": "", "tool_calls": [{{"type": "function", "function": {{"name": '
            f'"{name}", "arguments": {arguments_json}}}}}]}}, {{"role": "tool", "content": "r"}},'
            f' {{"role": "assistant", "content": "ok"}}]{tools_field}}}')


@pytest.mark.parametrize("text,where", [
    ('{"prompt": "p", "completion": "c", "score": 1e999}', "1e999"),
    ('{"prompt": "p", "completion": "c", "x": [{"y": -1e999}]}', "-1e999"),
    ('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a",'
     ' "loss_weight": 1e400}]}', "1e400"),
    (call_record('{"city": "Paris", "days": 1e999}'), "1e999"),  # arguments as an object
    (call_record('"{\\"days\\": -1e999}"'), "-1e999"),  # arguments as a JSON string
    (call_record('"{\\"days\\": NaN}"'), None),  # a NaN literal inside the string
    ('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],'
     ' "tools": "[{\\"name\\": \\"f\\", \\"max\\": 1E+999}]"}', "1E+999"),
])
def test_non_finite_numbers_are_invalid_number_anywhere(text, where):
    """Before: 1e999 parsed as float('inf') and was trained as "Infinity"."""
    result = parse(text)
    assert isinstance(result, Rejection)
    if where is None:  # NaN / Infinity literals are not JSON at all (RFC 8259)
        assert (result.reason, result.detail) == ("invalid_json", "NaN is not valid JSON")
    else:
        assert (result.reason, result.detail) == (
            "invalid_number", f"the number {where} is not finite as a double")


def test_nan_and_infinity_literals_stay_invalid_json():
    for literal in ("NaN", "Infinity", "-Infinity"):
        result = parse(f'{{"prompt": "p", "completion": "c", "x": {literal}}}')
        assert (result.reason, result.detail) == ("invalid_json", f"{literal} is not valid JSON")


def test_large_finite_numbers_are_kept():
    conv = parse(call_record('{"n": 1.7e308, "big": 123456789012345678901234567890}'))
    assert conv.messages[1].tool_calls[0].arguments == \
        '{"n": 1.7e+308, "big": 123456789012345678901234567890}'


@pytest.mark.parametrize("arguments", [
    '{"city": "Zürich", "units": {"t": "C"}, "days": [1, 2.5]}',  # an object
    '"{\\"city\\": \\"Zürich\\", \\"units\\": {\\"t\\": \\"C\\"}, \\"days\\": [1, 2.5]}"',
    '"{\\"city\\":\\"Z\\\\u00fcrich\\",\\"units\\":{\\"t\\":\\"C\\"},\\"days\\":[1,2.5]}"',
])
def test_tool_arguments_have_one_canonical_form(arguments):
    """An object, or a JSON string of one (any spacing, escaped or not): the same text, keys in
    the order given, and so the same example id."""
    conv = parse(call_record(arguments))
    [call] = conv.messages[1].tool_calls
    assert call.arguments == '{"city": "Zürich", "units": {"t": "C"}, "days": [1, 2.5]}'
    assert call.as_json() == ('{"name": "get_weather", "arguments": {"city": "Zürich", '
                              '"units": {"t": "C"}, "days": [1, 2.5]}}')
    assert conv.example_id() == parse(call_record(
        '{"city": "Zürich", "units": {"t": "C"}, "days": [1, 2.5]}')).example_id()
    # The parsed object travels with the text, so rendering does not parse it again.
    assert call.parsed == json.loads(call.arguments) == call.arguments_value()
    assert call.as_json() == json.dumps({"name": call.name, "arguments": call.parsed},
                                        ensure_ascii=False)


@pytest.mark.parametrize("arguments,canonical", [('""', "{}"), ("null", "{}"), ('"  "', "{}")])
def test_absent_tool_arguments_are_an_empty_object(arguments, canonical):
    assert parse(call_record(arguments)).messages[1].tool_calls[0].arguments == canonical


@pytest.mark.parametrize("arguments", ['[1, 2]', '"[1, 2]"', "3", '"\\"text\\""', '"{oops"'])
def test_tool_arguments_that_are_not_an_object_are_invalid(arguments):
    result = parse(call_record(arguments))
    assert result.reason == "invalid_tool_call", result.detail


@pytest.mark.parametrize("name,tools,outcome", [
    ("get_weather", TOOLS, None),  # declared, OpenAI style
    ("search", TOOLS, None),  # declared, plain {"name"} style
    ("delete_everything", TOOLS, "undeclared_tool"),
    ("delete_everything", None, None),  # no tools declared: nothing to check against
    ("delete_everything", '"[]"', None),
    ("delete_everything", '[{"description": "no name"}]', None),  # names unknown: not checked
    ("search", '"[{\\"name\\": \\"search\\"}]"', None),  # tools as a JSON string
])
def test_calls_to_undeclared_tools_are_rejected(name, tools, outcome):
    result = parse(call_record("{}", name=name, tools=tools))
    if outcome is None:
        assert not isinstance(result, Rejection), result
    else:
        assert (result.reason, result.detail) == (
            outcome, "message 1 calls 'delete_everything', which the record's tools do not "
                     "declare (get_weather, search)")


def test_sharegpt_function_call_to_an_undeclared_tool():
    text = ('{"conversations": [{"from": "human", "value": "h"}, {"from": "function_call",'
            ' "value": "{\\"name\\": \\"g\\", \\"arguments\\": {}}"}], '
            '"tools": "[{\\"name\\": \\"f\\"}]"}')
    assert parse(text).reason == "undeclared_tool"


def test_bundled_tool_call_file_is_fully_accepted_with_unchanged_canonical_arguments():
    """Every call of the glaive file names a declared tool, and its canonical arguments are the
    object's own JSON text (so the example ids did not move)."""
    import json

    from tests.conftest import read_records

    calls = 0
    for raw in read_records("glaive_toolcall_en_demo.jsonl"):
        conv = parse_record(raw)
        assert not isinstance(conv, Rejection), conv
        record = json.loads(raw.text)
        given = [json.loads(turn["value"]) for turn in record["conversations"]
                 if turn["from"] == "function_call"]
        found = [c for m in conv.messages for c in m.tool_calls]
        assert [(c.name, c.arguments) for c in found] == [
            (g["name"], json.dumps(g["arguments"], ensure_ascii=False)) for g in given]
        calls += len(found)
    assert calls == 211

"""The compiled JSON path (strict_json.loads) decodes every text exactly as the standard decoder
of formats.py does: the same values, types and key order, and the same errors with the same
messages; and parse_record's rejections keep their reasons and details, down to a file of
awkward lines recorded with main."""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftprep.transforms import strict_json
from sftprep.transforms.formats import _DECODER, parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.read import iter_raw_records
from sftprep.transforms.records import RawRecord, Rejection


def typed(value: Any) -> Any:
    """A value with its types spelled out: 1 and 1.0, 0.0 and -0.0, key orders all differ."""
    if isinstance(value, dict):
        return ("dict", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    return (type(value).__name__, repr(value))


def outcome(decode: Callable[[str], Any], text: str) -> Tuple:
    try:
        return ("value", typed(decode(text)))
    except Exception as err:  # noqa: BLE001 - the error itself is what is compared
        return ("error", type(err).__name__, str(err))


def same_as_standard(text: str) -> None:
    fast = outcome(lambda t: strict_json.loads(t, _DECODER.decode), text)
    assert fast == outcome(_DECODER.decode, text), text[:200]


EDGES = [
    # values msgspec decodes itself
    '{"a": 1, "b": [true, false, null], "c": {"d": "e"}}',
    '{"a": 1, "a": 2, "b": 3}',  # duplicate keys: the last value, at the first key's place
    '{"b": 1, "a": 2}',  # key order kept
    "18446744073709551615", "18446744073709551616", "-9223372036854775809",
    "123456789012345678901234567890", "-123456789012345678901234567890",
    "-0", "-0.0", "0.0", "1E2", "1e0005", "1e-400", "5e-324", "2.4703282292062327e-324",
    "2.4703282292062328e-324", "1.7976931348623157e308", "0.1", "3.141592653589793238462643",
    '"\\ud83d\\ude00"', '"\\u00e9\\/\\b\\f\\n\\r\\t"', '"\u2028\u2029\x7f\x85"', '"caf\u00e9 \U0001f600"',
    " \t\r\n{}\r\n\t ", '""', "[]", "{}", "true", "null",
    "[" * 500 + "]" * 500,
    # texts msgspec refuses: the standard decoder decides (value or error) as before
    "NaN", "Infinity", "-Infinity", '{"a": NaN}', "1e999", "-1e999", "1E400",
    "1.7976931348623159e308", "1" * 400, "1" * 400 + ".0", "1" * 5000, "-" + "1" * 5000,
    '"\\ud800"', '"\\udc00"', '"\\ud800a"', '"\\ud800\\u0041"',
    '"a\x00b"', '"a\x1fb"', "\ufeff{}", "\x0c{}", "\x0b{}", "\xa0{}", "\u2028{}", "{}\x00",
    "{} {}", "", " ", "[1,]", '{"a":1,}', "[01]", "[-]", "[1.]", "[.5]", "[+1]", "[1e]",
    "[1e+]", "[-01]", "[0x1]", "True", "[1 2]", '{"a" 1}', "{'a':1}", "{1:2}", '"abc', "[",
    '"\\x41"', '"\\u12"', "[" * 2000 + "]" * 2000, "[" * 100000 + "]" * 100000,
]


@pytest.mark.parametrize("text", EDGES, ids=range(len(EDGES)))
def test_edge_texts_decode_as_the_standard_decoder_decodes_them(text):
    same_as_standard(text)


def test_huge_integers_keep_every_digit():
    value = strict_json.loads('{"n": 123456789012345678901234567890}', _DECODER.decode)
    assert value == {"n": 123456789012345678901234567890} and type(value["n"]) is int


json_values = st.recursive(
    st.none() | st.booleans()
    | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters() | st.characters(categories=["Cs"]), max_size=20),  # lone surrogates too
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans(), st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]))
def test_random_documents_decode_alike(value, ascii_only, separators):
    same_as_standard(json.dumps(value, ensure_ascii=ascii_only, separators=separators))


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?",
                     fullmatch=True))
def test_random_numerals_decode_alike(numeral):
    same_as_standard(numeral)
    same_as_standard(f'{{"x": [{numeral}]}}')


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(list('{}[]",:0123456789.eE+- \t\n\\uatrfsnl\x00\x7f\u00e9')),
               max_size=30))
def test_random_json_like_texts_decode_alike(text):
    same_as_standard(text)


def _parse(text: str):
    return parse_record(RawRecord("a.jsonl", 7, text))


@pytest.mark.parametrize("text, reason, detail", [
    ('{"prompt": "p",}', "invalid_json",
     "Expecting property name enclosed in double quotes: line 1 column 16 (char 15)"),
    ('{"prompt": "p" "completion": "c"}', "invalid_json",
     "Expecting ',' delimiter: line 1 column 16 (char 15)"),
    ('{"prompt": "p", "completion": "c"} x', "invalid_json", "Extra data: line 1 column 36 (char 35)"),
    ('{"prompt": "a\x01", "completion": "c"}', "invalid_json",
     "Invalid control character at: line 1 column 14 (char 13)"),
    ("[1, 2]", "not_an_object", "a record must be a JSON object, got list"),
    ('{"prompt": "p", "completion": "c", "n": 1e400}', "invalid_number",
     "the number 1e400 is not finite as a double"),
    ('{"prompt": 123456789012345678901234567890, "completion": "c"}', "wrong_type",
     "field 'prompt' is int, expected str"),
])
def test_rejections_keep_their_reasons_and_details(text, reason, detail):
    result = _parse(text)
    assert isinstance(result, Rejection)
    assert (result.reason, result.detail, result.raw, result.line) == (reason, detail, text, 7)


def test_values_msgspec_refuses_still_parse_as_before():
    lone = _parse('{"prompt": "a\\ud800b", "completion": "c"}')  # normalize rejects it later
    assert [m.content for m in lone.messages] == ["a\ud800b", "c"]
    repeated = _parse('{"prompt": "a", "prompt": "b", "completion": "c"}')
    assert [m.content for m in repeated.messages] == ["b", "c"]


def test_tool_arguments_keep_huge_integers_and_key_order():
    record = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": '{"z": 123456789012345678901234567890, "a": 0.1}'}}]},
        {"role": "assistant", "content": "done"}]}
    conv = _parse(json.dumps(record))
    assert conv.messages[1].tool_calls[0].arguments == \
        '{"z": 123456789012345678901234567890, "a": 0.1}'


def _call(arguments: str) -> bytes:
    return json.dumps({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]}).encode()


AWKWARD_LINES = [
    b'{oops', b'{"prompt": NaN, "completion": "c"}', b'{"prompt": "p", "completion": "c", "x": 1e999}',
    b'{"prompt": "p", "completion": "c", "x": -1E400}', b'[1, 2]', b'"text"', b'{"prompt": "p",}',
    b'{"prompt": "a", "prompt": "b", "completion": "c"}',
    b'{"prompt": "bad \\ud800", "completion": "c"}',
    b'{"prompt": "ctl \\u0001\\u007f\\u0085 x", "completion": "c\\r\\nd"}',
    b'{"prompt": "p\xff\xfe", "completion": "c"}',
    b'[' * 3000 + b']' * 3000, b'{"prompt": 123456789012345678901234567890, "completion": "c"}',
    _call('{"n": 123456789012345678901234567890, "f": 0.1}'), _call('{"n": 1e999}'),
    _call('{"n": NaN}'), _call('not json'), b'{"prompt": "p", "completion": "c"} trailing',
    b'{"prompt": "Caf\\u0065\\u0301 \\ufeff", "completion": "\xc3\xa9t\xc3\xa9"}',
    b'{"prompt": "' + b'1' * 5000 + b'", "completion": "' + b'2' * 30 + b'"}',
    b'{"prompt": 1' + b'0' * 5000 + b', "completion": "c"}', b'   ',
    b'{"instruction": "i", "output": "o", "input": "x\\u2028y"}']

# Recorded with main before the compiled decoder and the normalize fast paths: line, then the
# rejection's reason and detail, or "ok" and the example id.
AWKWARD_OUTCOMES = [
    (1, "invalid_json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (2, "invalid_json", "NaN is not valid JSON"),
    (3, "invalid_number", "the number 1e999 is not finite as a double"),
    (4, "invalid_number", "the number -1E400 is not finite as a double"),
    (5, "not_an_object", "a record must be a JSON object, got list"),
    (6, "not_an_object", "a record must be a JSON object, got str"),
    (7, "invalid_json", "Expecting property name enclosed in double quotes: line 1 column 16 (char 15)"),
    (8, "ok", "e25986381179998478d95bba8c898914"),
    (9, "invalid_utf8", "text contains a lone UTF-16 surrogate"),
    (10, "ok", "1faa27ddd1ecd399cc153290c9a0ff94"),
    (11, "invalid_utf8", "byte 13: invalid start byte; raw shows U+FFFD for bad bytes"),
    (12, "invalid_json", "nesting too deep"),
    (13, "wrong_type", "field 'prompt' is int, expected str"),
    (14, "ok", "1308bf263fad2f0655b5e1d1a41a557f"),
    (15, "invalid_number", "the number 1e999 is not finite as a double"),
    (16, "invalid_json", "NaN is not valid JSON"),
    (17, "invalid_tool_call", "messages[1]: arguments are not JSON"),
    (18, "invalid_json", "Extra data: line 1 column 36 (char 35)"),
    (19, "ok", "60cb8f10a7ec620349b5086d58ab6e36"),
    (20, "ok", "8b5fe5e04754f2e419ca2a2a17ea7958"),
    (21, "invalid_json", "Exceeds the limit (4300 digits) for integer string conversion: value has "
                         "5001 digits; use sys.set_int_max_str_digits() to increase the limit"),
    (23, "ok", "bc74923eba5704ae13f791e284db64c6"),
]


def test_awkward_lines_read_parse_and_normalize_as_they_did_before():
    records = list(iter_raw_records("m.jsonl", io.BytesIO(b"\n".join(AWKWARD_LINES) + b"\n"),
                                    1 << 20))
    outcomes = []
    for raw in records:
        conv = parse_record(raw)
        if isinstance(conv, Rejection):
            outcomes.append((raw.line, conv.reason, conv.detail))
            continue
        normal = normalize_conversation(conv)
        outcomes.append((raw.line, *normal) if isinstance(normal, tuple)
                        else (raw.line, "ok", normal.example_id()))
    assert outcomes == AWKWARD_OUTCOMES

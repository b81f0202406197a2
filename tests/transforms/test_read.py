"""Reading files into raw records: line numbers, .json arrays, .gz, BOM, oversized lines."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from sftprep.transforms.read import iter_raw_records


def read(name, data, limit=1 << 20):
    return list(iter_raw_records(name, io.BytesIO(data), limit))


def test_jsonl_lines_keep_their_numbers_and_skip_blank_lines():
    records = read("a.jsonl", b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"b": 2}\n{"c": 3}')
    assert [(r.line, r.text, r.error) for r in records] == [
        (1, '{"a": 1}', None), (4, '{"b": 2}', None), (5, '{"c": 3}', None)]


def test_invalid_utf8_is_a_record_with_a_reason():
    [record] = read("a.jsonl", b'{"a": "\xff"}\n')
    assert record.error == "invalid_utf8" and record.line == 1 and "\ufffd" in record.text


def test_oversized_line_is_rejected_without_holding_it():
    big = b'{"a": "' + b"x" * 5000 + b'"}\n'
    records = read("a.jsonl", b'{"ok": 1}\n' + big + b'{"ok": 2}\n', limit=1024)
    assert [(r.line, r.error) for r in records] == [(1, None), (2, "record_too_large"), (3, None)]
    assert "5010 bytes" in records[1].detail and len(records[1].text) <= 4096


def test_json_array_elements_are_numbered():
    data = json.dumps([{"a": 1}, {"b": 2}, 3]).encode()
    assert [(r.line, json.loads(r.text)) for r in read("a.json", data)] == [
        (1, {"a": 1}), (2, {"b": 2}), (3, 3)]


def test_json_file_that_is_really_jsonl_is_read_by_line():
    assert [r.line for r in read("a.json", b'{"a": 1}\n{"b": 2}\n')] == [1, 2]


def test_gzip_and_corrupt_gzip():
    payload = gzip.compress(b'{"a": 1}\n{"b": 2}\n')
    assert [r.line for r in read("a.jsonl.gz", payload)] == [1, 2]
    records = read("a.jsonl.gz", payload[: len(payload) // 2])
    assert records[-1].error == "unreadable_file"
    assert all(r.error is None for r in records[:-1])


def test_ranges_together_read_exactly_the_whole_file():
    import random

    from sftprep.transforms.read import count_newlines, iter_range_records, plan_ranges

    rng = random.Random(7)
    lines = []
    for i in range(300):
        kind = rng.random()
        if kind < 0.1:
            lines.append(b"")  # blank line
        elif kind < 0.15:
            lines.append(b'{"big": "' + b"y" * rng.randint(300, 900) + b'"}')
        else:
            lines.append(json.dumps({"i": i, "t": "x" * rng.randint(0, 120)}).encode())
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
    whole = [(r.line, r.text, r.error) for r in read("a.jsonl", data, limit=512)]
    for range_bytes in (1, 7, 64, 333, 1000, len(data)):
        ranges = plan_ranges("a.jsonl", len(data), range_bytes)
        counts = [count_newlines(io.BytesIO(data), r) for r in ranges]
        got = []
        for r in ranges:
            before = sum(counts[: r.index])
            got += [(x.line, x.text, x.error)
                    for x in iter_range_records(r, io.BytesIO(data), before, 512)]
        assert got == whole, range_bytes


def _random_values(rng, count):
    """JSON values that stress the element scanner: brackets, commas and escapes in strings."""
    pieces = ['a,b', ']', '}', '[{', '\\', '"', '\\"', 'ü', '\n', ' ', '\u2028', 'x' * 30]
    values = []
    for i in range(count):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        kind = i % 5
        if kind == 0:
            values.append({"k": text, "n": [i, -i * 1.5, None, True], "o": {"d": {"e": [text]}}})
        elif kind == 1:
            values.append([text, [], {}, [[text]]])
        elif kind == 2:
            values.append(text)
        elif kind == 3:
            values.append(rng.choice([0, -7, 3.25e10, True, False, None]))
        else:
            values.append({})
    return values


def test_json_array_elements_survive_every_chunk_boundary(monkeypatch):
    """Element by element, in chunks as small as one byte: each record is exactly its element
    (its bytes as written, spacing included), numbered in order."""
    import random

    from sftprep.transforms import read as read_module

    rng = random.Random(3)
    values = _random_values(rng, 60)
    for indent in (None, 2):
        data = b"\xef\xbb\xbf \n" + json.dumps(values, indent=indent, ensure_ascii=False).encode()
        data += b" \n\t"
        for chunk in (1, 2, 3, 7, 64, 1 << 16):
            monkeypatch.setattr(read_module, "_CHUNK", chunk)
            records = read("a.json", data)
            assert [r.line for r in records] == list(range(1, 61)), (indent, chunk)
            assert [json.loads(r.text) for r in records] == values, (indent, chunk)
            assert all(r.error is None and r.text == r.text.strip() for r in records)


def test_json_array_keeps_the_file_bytes_of_each_element():
    data = b'[ {"b": 2,  "a": "\\u00e9"} ,\n  "s" ]'
    assert [r.text for r in read("a.json", data)] == ['{"b": 2,  "a": "\\u00e9"}', '"s"']


def test_json_single_object_over_several_lines_is_record_one():
    data = b'\n{\n  "prompt": "p",\n  "completion": "c"\n}\n\n'
    [record] = read("a.json", data)
    assert (record.line, json.loads(record.text), record.error) == (
        1, {"prompt": "p", "completion": "c"}, None)


@pytest.mark.parametrize("data,expected", [
    (b"[]", []),
    (b"  [ \n ]  ", []),
    (b"", []),
    (b"   \n  ", []),
    (b'[{"a": 1} {"b": 2}]', [(1, None), (2, "invalid_json")]),  # a missing comma
    (b'[{"a": 1},]', [(1, None), (2, "invalid_json")]),  # a trailing comma
    (b'[{"a": 1}', [(1, None), (2, "invalid_json")]),  # no closing bracket
    (b'[{"a": 1}] [2]', [(1, None), (2, "invalid_json")]),  # text after the array
    (b'[{"a": [1}, 2]', [(1, None), (2, "invalid_json")]),  # the bad element swallows the "]"
    (b'[{"a": "unterminated}]', [(1, None), (2, "invalid_json")]),
    (b'{"a": 1}\n{"b": 2}\n', [(1, None), (2, None)]),  # JSON Lines named .json
    (b'{"a": 1\n{"b": 2}\n', [(1, None), (2, None)]),  # JSON Lines with a bad first line
    (b'3\n[4]\n', [(1, None), (2, None)]),  # not an array or an object: read as lines
])
def test_json_document_shapes(data, expected):
    assert [(r.line, r.error) for r in read("a.json", data)] == expected


def test_broken_json_array_says_where_in_one_record():
    records = read("a.json", b'[{"a": 1},\n {"b": 2} {"c": 3}, {"d": 4}]')
    assert [r.line for r in records] == [1, 2, 3]
    assert records[2].error == "invalid_json" and records[2].text.startswith('{"c": 3}')
    assert records[2].detail == ("the JSON array breaks at byte 21 after element 2: expected "
                                 "',' or ']'; the rest of the file is not read")


def test_oversized_json_elements_are_previewed_and_skipped():
    big = {"prompt": "p" * 3000, "completion": "c"}
    data = json.dumps([{"a": 1}, big, "x" * 2000, {"b": 2}]).encode()
    records = read("a.json", data, limit=1024)
    assert [(r.line, r.error) for r in records] == [
        (1, None), (2, "record_too_large"), (3, "record_too_large"), (4, None)]
    assert records[1].text == json.dumps(big)[:4096]
    assert records[1].detail.startswith(f"{len(json.dumps(big))} bytes > --max-record-bytes 1024")


def test_json_gz_streams_and_lines_fallback_gz():
    payload = gzip.compress(b'[{"a": 1}, {"b": 2}]')
    assert [r.line for r in read("a.json.gz", payload)] == [1, 2]
    payload = gzip.compress(b'{"a": 1}\n{"b": 2}\n')
    assert [r.line for r in read("a.json.gz", payload)] == [1, 2]

"""Reading files into raw records: line numbers, .json arrays, .gz, BOM, oversized lines."""

from __future__ import annotations

import gzip
import io
import json

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

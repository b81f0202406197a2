"""Fuzzing the parsers with hypothesis, bounded in examples so CI time stays fixed: whatever the
bytes, reading, parsing and normalizing return records or rejections and never raise."""

from __future__ import annotations

import gzip
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.read import iter_raw_records
from sftprep.transforms.records import Conversation, Rejection

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["prompt", "completion", "instruction", "input", "output", "messages",
                        "conversations", "role", "content", "from", "value", "tools",
                        "tool_calls", "function", "name", "arguments", "type", "text",
                        "system", "history", "loss_weight"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=20)


def _fate(raw):
    parsed = parse_record(raw)
    if isinstance(parsed, Rejection):
        assert parsed.reason and parsed.detail is not None
        return parsed
    assert isinstance(parsed, Conversation)
    result = normalize_conversation(parsed)
    assert isinstance(result, (Conversation, tuple))
    return result


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["f.jsonl", "f.json", "f.jsonl.gz"]))
def test_arbitrary_bytes_never_crash_the_readers(data, name):
    if name.endswith(".gz") and data[:1] == b"x":
        data = gzip.compress(data)
    lines = set()
    for raw in iter_raw_records(name, io.BytesIO(data), 256):
        assert raw.line not in lines or raw.error == "unreadable_file"
        lines.add(raw.line)
        _fate(raw)


@FUZZ
@given(json_values)
def test_arbitrary_json_never_crashes_parsing(value):
    from sftprep.transforms.records import RawRecord

    try:
        text = json.dumps(value)
    except ValueError:
        return
    _fate(RawRecord("f.jsonl", 1, text))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool", "gpt", "bogus"]),
                          st.one_of(st.text(max_size=30), st.none(), st.integers())), max_size=6))
def test_arbitrary_dialogues_are_accepted_or_rejected_with_a_reason(turns):
    from sftprep.transforms.records import RawRecord

    record = {"messages": [{"role": r, "content": c} for r, c in turns]}
    result = _fate(RawRecord("f.jsonl", 1, json.dumps(record)))
    if isinstance(result, Conversation):
        assert result.messages[-1].role == "assistant"
        assert all(m.content or m.tool_calls for m in result.messages)

"""The record types: hand-written constructors that match their fields, frozen records, and
example ids that stay the bytes they were."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest

from sftprep.transforms.records import Conversation, Message, RawRecord, ToolCall


@pytest.mark.parametrize("cls", [RawRecord, Message, Conversation])
def test_constructors_take_the_fields_in_order_with_their_defaults(cls):
    parameters = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields]


def test_records_stay_frozen_comparable_and_replaceable():
    message = Message("user", "hi")
    assert (message.tool_calls, message.trainable, message.reasoning) == ((), None, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]
    assert message == Message("user", "hi") and hash(message) == hash(Message("user", "hi"))
    assert dataclasses.replace(message, content="bye") == Message("user", "bye")
    conv = Conversation((message,), source="a.jsonl", line=2)
    assert pickle.loads(pickle.dumps(conv)) == conv
    assert repr(RawRecord("a.jsonl", 1, "{}")) == \
        "RawRecord(source='a.jsonl', line=1, text='{}', error=None, detail='')"


def test_example_ids_are_the_ones_recorded_before_the_second_round_of_speed_work():
    """Recorded with the code before this round's changes: ids are part of the output."""
    calls = (ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", "{}"))
    conv = Conversation(
        (Message("system", "Be brief."), Message("user", "Weather in Paris?"),
         Message("assistant", "", calls), Message("tool", '{"temp": 21}'),
         Message("assistant", "21 °C and sunny.", reasoning="The tool said 21."),
         Message("user", "ok", trainable=False), Message("assistant", "Bye", trainable=True)),
        tools='[{"name": "get_time"}, {"name": "get_weather"}]', source="x.jsonl", line=3,
        dialect="messages")
    assert conv.example_id() == "8fe8fcdd5b202375e5f6955dec3d8831"
    assert Conversation((Message("user", "q"), Message("assistant", "a"))).example_id() == \
        "44ed4864f31b80c8ff7576eab5b86d5e"

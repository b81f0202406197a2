"""The preference dialect: the chosen answer is trained, `rejected` is never read or written."""

from __future__ import annotations

import json

import pytest

from sftprep.transforms.formats import parse_record
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord, Rejection
from tests.conftest import spec_for

# LLaMA-Factory's DPO demo layout (ShareGPT conversations + chosen / rejected turns).
LLAMA_FACTORY = {
    "conversations": [{"from": "human", "value": "Name a prime number above 10."}],
    "chosen": {"from": "gpt", "value": "11 is a prime number."},
    "rejected": {"from": "gpt", "value": "REJECTED-TEXT 12 is prime."}}
TRL_CONVERSATIONAL = {
    "prompt": [{"role": "user", "content": "What colour is the sky?"}],
    "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
    "rejected": [{"role": "assistant", "content": "REJECTED-TEXT Green."}], "id": 7}
TRL_PLAIN = {"prompt": "2 + 2 =", "chosen": "4", "rejected": "REJECTED-TEXT 5",
             "category": "math"}
ANTHROPIC_HH = {
    "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for "
              "nine minutes.\n\nHuman: Thanks!\n\nAssistant: You're welcome.",
    "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: REJECTED-TEXT Microwave it."}


def parsed(record, fmt=None):
    return parse_record(RawRecord("p.jsonl", 1, json.dumps(record)), fmt)


@pytest.mark.parametrize("record,expected", [
    (LLAMA_FACTORY, [("human", "Name a prime number above 10."),
                     ("gpt", "11 is a prime number.")]),
    (TRL_CONVERSATIONAL, [("user", "What colour is the sky?"),
                          ("assistant", "Blue, on a clear day.")]),
    (TRL_PLAIN, [("user", "2 + 2 ="), ("assistant", "4")]),
    (ANTHROPIC_HH, [("user", "How do I boil an egg?"),
                    ("assistant", "Put it in boiling water for nine minutes."),
                    ("user", "Thanks!"), ("assistant", "You're welcome.")]),
])
def test_each_layout_reads_prompt_and_chosen(record, expected):
    conv = parsed(record)
    assert conv.dialect == "preference"
    assert [(m.role, m.content) for m in conv.messages] == expected


def test_chosen_wins_over_a_forced_format():
    """A record with chosen / rejected is never read as a dialect that ignores them."""
    conv = parsed(LLAMA_FACTORY, fmt="sharegpt")
    assert conv.dialect == "preference" and conv.messages[-1].content == "11 is a prime number."


def test_missing_chosen_is_a_rejection():
    out = parsed({"prompt": "hi", "rejected": "no"})
    assert isinstance(out, Rejection) and out.reason == "missing_field"


def test_chosen_trained_rejected_never_written(runtime, token_info):
    records = [RawRecord("p.jsonl", i + 1, json.dumps(r)) for i, r in
               enumerate([LLAMA_FACTORY, TRL_CONVERSATIONAL, TRL_PLAIN, ANTHROPIC_HH])]
    settings = PrepareSettings(template=spec_for("chatml", token_info))
    batch = prepare_batch(records, settings, runtime)
    assert not batch.rejected and not batch.dropped and len(batch.examples) == 4
    decode = runtime.tokenizer.decode
    for example, answer in zip(sorted(batch.examples, key=lambda e: e.source_line),
                               ["11 is a prime number.", "Blue, on a clear day.", "4",
                                "You're welcome."]):
        text = decode(example.input_ids.tolist())
        trained = decode([t for t in example.labels.tolist() if t != -100])
        assert "REJECTED-TEXT" not in text
        assert answer in trained

"""Truncation policies on constructed long examples, through the whole example path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord
from tests.conftest import spec_for

LONG = " ".join(f"word{i}" for i in range(400))  # several hundred tokens


def record(obj, line=1):
    return RawRecord("t.jsonl", line, json.dumps(obj))


def prepare(records, runtime, info, policy, max_length, template="chatml", **kw):
    settings = PrepareSettings(template=spec_for(template, info), truncation=policy,
                               max_length=max_length, **kw)
    return prepare_batch(records, settings, runtime)


def trained_text(runtime, example):
    return runtime.decode(example.input_ids[example.labels != -100])


def test_short_examples_are_untouched(runtime, token_info):
    batch = prepare([record({"prompt": "hi", "completion": "hello"})], runtime, token_info,
                    "keep_completion", 64)
    [example] = batch.examples
    assert example.truncation == ()


def test_keep_completion_cuts_the_prompt_from_the_left(runtime, token_info):
    obj = {"system": "Be terse.", "prompt": LONG, "completion": "The answer is 42."}
    [example] = prepare([record(obj)], runtime, token_info, "keep_completion", 100).examples
    text = runtime.decode(example.input_ids)
    assert len(example.input_ids) == 100 and example.truncation == ("prompt_truncated",)
    assert text.startswith(token_info.bos + "<|im_start|>system\nBe terse.<|im_end|>\n"
                           "<|im_start|>user\n")
    assert "word0 " not in text and "word399<|im_end|>" in text  # oldest words went first
    assert trained_text(runtime, example) == "The answer is 42.<|im_end|>"


def test_keep_completion_cuts_the_completion_end_when_it_alone_is_too_long(runtime, token_info):
    obj = {"prompt": "Count.", "completion": LONG}
    [example] = prepare([record(obj)], runtime, token_info, "keep_completion", 80).examples
    assert len(example.input_ids) == 80
    assert example.truncation == ("completion_truncated",)
    assert "<|im_start|>user\nCount.<|im_end|>" in runtime.decode(example.input_ids)
    assert trained_text(runtime, example).startswith("word0 word1")
    assert not trained_text(runtime, example).endswith("<|im_end|>")


def test_keep_completion_splits_the_room_when_both_sides_are_long(runtime, token_info):
    obj = {"prompt": LONG, "completion": LONG.replace("word", "reply")}
    [example] = prepare([record(obj)], runtime, token_info, "keep_completion", 200).examples
    text = runtime.decode(example.input_ids)
    assert len(example.input_ids) == 200
    assert example.truncation == ("prompt_truncated", "completion_truncated")
    assert "word399<|im_end|>" in text and "word0 " not in text  # the prompt's most recent part
    assert trained_text(runtime, example).startswith("reply0 reply1")
    assert 80 <= example.num_trainable_tokens <= 120  # about half the room


def test_keep_completion_drops_what_cannot_fit(runtime, token_info):
    obj = {"system": LONG, "prompt": "q", "completion": "a"}
    batch = prepare([record(obj)], runtime, token_info, "keep_completion", 50)
    assert not batch.examples and [d.reason for d in batch.dropped] == ["cannot_fit"]


def test_truncate_right_and_drop(runtime, token_info):
    long_answer = {"prompt": "short", "completion": LONG}
    [example] = prepare([record(long_answer)], runtime, token_info, "truncate_right", 60).examples
    assert len(example.input_ids) == 60 and example.truncation == ("truncated_right",)
    assert trained_text(runtime, example).startswith("word0 word1")
    # A long prompt leaves nothing of the completion: no trained token, so the row is dropped.
    obj = {"prompt": LONG, "completion": "done"}
    dropped = prepare([record(obj)], runtime, token_info, "truncate_right", 60,
                      min_trainable_tokens=1)
    assert [d.reason for d in dropped.dropped] == ["no_trainable_tokens"]
    batch = prepare([record(obj)], runtime, token_info, "drop", 60)
    assert not batch.examples and [d.reason for d in batch.dropped] == ["too_long"]
    assert batch.dropped[0].raw == json.dumps(obj)


def test_truncate_right_keeps_rows_with_no_trained_tokens_only_when_asked(runtime, token_info):
    obj = {"prompt": LONG, "completion": "done"}
    [example] = prepare([record(obj)], runtime, token_info, "truncate_right", 60,
                        min_trainable_tokens=0).examples
    assert example.num_trainable_tokens == 0


def test_drop_oldest_turns_removes_whole_exchanges(runtime, token_info):
    turns = []
    for i in range(6):
        turns += [{"from": "human", "value": f"question {i} " + LONG[:300]},
                  {"from": "gpt", "value": f"answer {i}"}]
    obj = {"conversations": turns, "system": "sys"}
    [example] = prepare([record(obj)], runtime, token_info, "drop_oldest_turns", 200).examples
    text = runtime.decode(example.input_ids)
    assert len(example.input_ids) <= 200
    assert "oldest_turns_dropped" in example.truncation
    assert "<|im_start|>system\nsys<|im_end|>" in text
    assert "question 5" in text and "question 0" not in text
    # Kept exchanges are whole: every kept question still has its answer trained.
    kept = [i for i in range(6) if f"question {i}" in text]
    assert trained_text(runtime, example) == "".join(f"answer {i}<|im_end|>" for i in kept)


@pytest.mark.parametrize("policy", ["keep_completion", "drop_oldest_turns", "truncate_right"])
def test_every_policy_respects_max_length_on_real_dialogues(runtime, token_info, policy):
    from tests.conftest import read_records

    records = read_records("glaive_toolcall_en_demo.jsonl", limit=150)
    batch = prepare(records, runtime, token_info, policy, 256, template="markers")
    assert batch.examples
    for example in batch.examples:
        assert len(example.input_ids) <= 256
        assert len(example.input_ids) == len(example.labels)
        assert example.num_trainable_tokens == int(np.count_nonzero(example.labels != -100)) >= 1
    assert len(batch.examples) + len(batch.dropped) + len(batch.rejected) == len(records)
    assert any(example.truncation for example in batch.examples)

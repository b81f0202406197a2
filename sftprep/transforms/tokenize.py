"""Tokenize rendered texts in batches and derive labels from the trained character spans.

The whole rendered text is tokenized at once, so the ids are the tokenizer's own ids of the text,
as `apply_chat_template(..., tokenize=True)` gives them. Where `bpe.FastBPE` gives the
tokenizer's own ids (the default tokenizer; Llama 3, Qwen 2 and GPT-2 style ones), a batch's ids
come from it without an `Encoding` per text. For byte-level BPE tokenizers (GPT-2 style: Llama 3,
Qwen, DeepSeek, ...) every token stands for a fixed byte string, so the byte offsets of a whole
batch are one cumulative sum over a table of token byte lengths, and labels for the batch are one
`searchsorted`; an example whose token bytes do not add up to its text (some other tokenizer) is
labelled from the tokenizer's own character offsets instead.

A token can cross the edge of a trained span: the template's text and the model's merged into
one token (`\n\n` + `Sure`, or a terminator the vocabulary does not know merged with what
follows). `--crossing-tokens` names what happens then (`CROSSING`):
- `train` (the default) keeps the tokenizer's tokens and trains every token that holds a trained
  character, as transformers' `return_assistant_tokens_mask` does;
- `split` cuts the text at the edge and tokenizes it piece by piece, so only the model's own text
  is trained (the ids then differ from the tokenizer's tokens of the whole text there).

Message content that spells a special token (`<|im_end|>`, the EOS, ...) is always tokenized in
pieces, with special-token matching off for the content, so data can never forge a control token.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
import re
import threading
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from sftprep.transforms.bpe import FastBPE
from sftprep.transforms.templates import Rendered

IGNORE_INDEX = -100
Span = Tuple[int, int]
CROSSING = ("train", "split")  # what a token crossing a trained span's edge does (see above)
FAST_BPE_MIN_TEXTS = 64  # smaller batches (small runs) are not worth building the engine for
_CHECKED_TEXTS = 16  # texts of the first engine batch compared with the tokenizer's own ids


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, where the OS has one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


@dataclasses.dataclass(frozen=True)
class Tokens:
    """One tokenized example.

    `locate(c)` is the index of the first token that starts at or after character `c` of the
    rendered text, so the tokens whose first character lies in [a, b) are
    `range(locate(a), locate(b))`. Truncation uses it; it is not kept after truncation.
    """

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where untrained
    locate: Callable[[int], int]
    segmented: bool = False  # tokenized piece by piece (see module docstring)

    def token_range(self, span: Span) -> range:
        return range(self.locate(span[0]), self.locate(span[1]))


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
        self._fast_state = "unbuilt"  # -> "unchecked" -> "on", or "off"
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
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(handle.read(), bos)

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
        if self._fast_state == "unbuilt":
            with self._fast_lock:
                if self._fast_state == "unbuilt":
                    text = self._json if self._json is not None else self.tokenizer.to_str()
                    self._json = None  # 6 MB for the default tokenizer, needed only here
                    self._fast = FastBPE.for_tokenizer(text)
                    self._fast_state = "unchecked" if self._fast is not None else "off"
        return self._fast if self._fast_state != "off" else None

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
        if self._fast_state == "unchecked":
            checked = range(min(len(texts), _CHECKED_TEXTS))
        else:
            checked = [max(range(len(texts)), key=lambda index: len(texts[index]))] if texts else []
        expected = self.tokenizer.encode_batch([texts[i] for i in checked], add_special_tokens=False)
        for index, encoding in zip(checked, expected):
            if encoding.ids != ids[offsets[index]:offsets[index + 1]].tolist():
                logging.warning("sftprep: the fast BPE engine disagrees with the tokenizer on a "
                                "text (%r...); using the tokenizer alone from here on",
                                texts[index][:80])
                self._fast_state = "off"
                return None
        self._fast_state = "on"
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


def label_mask(starts: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """True for tokens whose first character lies inside one of the sorted, disjoint spans
    (given as (start, end) pairs, or as their edges end to end).

    >>> label_mask(np.array([0, 2, 5, 7]), [(2, 6)]).tolist()
    [False, True, True, False]
    """
    edges = np.asarray(spans, dtype=np.int64).reshape(-1)
    if not len(edges):
        return np.zeros(len(starts), dtype=bool)
    return (np.searchsorted(edges, starts, side="right") % 2) == 1


def find_hostile(runtime: TokenizerRuntime, rendered: Sequence[Rendered]) -> List[bool]:
    """Which texts have data (message content; for Jinja templates, any data string) that
    spells a special token."""
    spells = runtime.spells_special_token
    return [any(spells(r.text, start, end) for start, end in r.literal_spans()) for r in rendered]


def plain_texts(rendered: Sequence[Rendered], hostile: Sequence[bool]) -> List[str]:
    """The texts tokenized whole in one batch call (hostile ones go piece by piece)."""
    return [r.text for r, h in zip(rendered, hostile) if not h]


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


def tokenize_batch(runtime: TokenizerRuntime, rendered: Sequence[Rendered],
                   spans: Sequence[Sequence[Span]], hostile: Optional[Sequence[bool]] = None,
                   crossing: str = "train") -> List[Tokens]:
    """Tokenize each rendered text and label the tokens of its trained spans.

    `hostile` may come precomputed (`find_hostile`).
    """
    if hostile is None:
        hostile = find_hostile(runtime, rendered)
    encodings = iter(encode_texts(runtime, plain_texts(rendered, hostile), fast=False).encodings)
    return [tokens_of(runtime, r, s, None if h else next(encodings), crossing)
            for r, s, h in zip(rendered, spans, hostile)]


@dataclasses.dataclass(frozen=True)
class LabelledBatch:
    """Whole-text encodings of a batch, labelled column by column: example e's tokens are
    `input_ids[offsets[e]:offsets[e + 1]]`. `exact[e]` is False where the labels could not be
    derived this way (the example then takes the per-example path)."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32
    offsets: np.ndarray  # int64, one more than the examples
    exact: np.ndarray  # bool
    trainable: np.ndarray  # int64, trained tokens of each example

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def label_batch(runtime: TokenizerRuntime, spans: Sequence[Sequence[Span]],
                encoded: Encoded, crossing: str = "train") -> LabelledBatch:
    """Labels for a batch of whole-text encodings from token byte lengths, vectorized.

    The batch is handled as one text: token byte offsets are a cumulative sum of token byte
    lengths, character positions become byte positions through the UTF-8 length of every
    character, and labels are one `searchsorted` against the span edges. An example is not
    `exact` when its token bytes do not add up to its text (not a byte-level tokenizer), the
    template wrote BOS twice, or (`crossing` "split") a span edge falls inside a token.
    """
    texts = encoded.texts
    count = len(texts)
    offsets = np.zeros(count + 1, dtype=np.int64)
    if runtime.token_bytes is None or not count:
        nothing = np.zeros(0, dtype=np.int32)
        return LabelledBatch(nothing, nothing, offsets, np.zeros(count, bool),
                             np.zeros(count, np.int64))
    ids, offsets = encoded.ids, encoded.offsets
    widths = runtime.token_bytes[ids]
    unknown = np.zeros(len(ids) + 1, dtype=np.int64)  # ids the table does not know, counted
    np.cumsum(widths < 0, out=unknown[1:])
    bounds = np.zeros(len(ids) + 1, dtype=np.int64)  # bounds[k]: batch byte where token k starts
    np.cumsum(np.maximum(widths, 1), out=bounds[1:])

    # Byte position of every character of the batch's texts, laid end to end.
    chars = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, count), out=chars[1:])
    joined = "".join(texts)
    char_bytes = np.zeros(len(joined) + 1, dtype=np.int64)
    if joined.isascii():
        char_bytes[1:] = 1
    else:
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        char_bytes[1:] = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    np.cumsum(char_bytes, out=char_bytes)
    text_start = char_bytes[chars]

    flat = [edge for example_spans in spans for span in example_spans for edge in span]
    owner = np.repeat(np.arange(count), np.fromiter(map(len, spans), np.int64, count) * 2)
    at = char_bytes[np.asarray(flat, dtype=np.int64) + chars[owner]]
    # Token bytes and text bytes of an example start together once their totals agree.
    exact = (bounds[offsets[1:]] - bounds[offsets[:-1]] == np.diff(text_start)) \
        & (unknown[offsets[1:]] == unknown[offsets[:-1]])
    at += (bounds[offsets[:-1]] - text_start[:-1])[owner]
    position = np.minimum(np.searchsorted(bounds, at), len(bounds) - 1)
    inside = bounds[position] != at  # an edge inside a token
    if crossing == "split":
        exact[owner[inside]] = False
    elif inside.any():  # widen to whole tokens: starts down, ends up to the token's bounds
        starting = np.arange(len(at)) % 2 == 0
        at = np.where(inside, bounds[np.maximum(position - starting, 0)], at)
        # One token holding the end of a span and the start of the next: spans stay ordered.
        same = owner[1:-1:2] == owner[2::2]
        at[2::2] = np.where(same, np.maximum(at[2::2], at[1:-1:2]), at[2::2])
    if runtime.bos_id is not None and len(ids) > 1:
        first = np.minimum(offsets[:-1], len(ids) - 2)
        exact &= ~((np.diff(offsets) > 1) & (ids[first] == runtime.bos_id)
                   & (ids[first + 1] == runtime.bos_id))
    trained = label_mask(bounds[:-1], at[exact[owner]])
    labels = np.where(trained, ids, IGNORE_INDEX).astype(np.int32)
    counted = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(trained, out=counted[1:])
    return LabelledBatch(ids, labels, offsets, exact, counted[offsets[1:]] - counted[offsets[:-1]])


def tokens_of(runtime: TokenizerRuntime, rendered: Rendered, spans: Sequence[Span],
              encoding=None, crossing: str = "train") -> Tokens:
    """One example the per-example way: from its whole-text encoding where `crossing` allows,
    else piece by piece (`encoding` None: its content spells a special token)."""
    if encoding is not None:
        tokens = _from_encoding(runtime, encoding, rendered.text, spans, crossing)
        if tokens is not None:
            return tokens
    return _tokenize_pieces(runtime, rendered, spans, literal_content=encoding is None)


def _from_encoding(runtime: TokenizerRuntime, encoding, text: str, spans: Sequence[Span],
                   crossing: str) -> Optional[Tokens]:
    """Labels from a whole-text encoding, by looking up only the span edges (no per-token work):
    the tokens that hold a trained character; None when a token crosses an edge and `crossing`
    is "split"."""
    length = len(text)
    ids = np.asarray(encoding.ids, dtype=np.int32)
    count = len(ids)

    def locate(char: int) -> int:
        if char >= length:
            return count
        token = encoding.char_to_token(char)
        if token is None:
            return count
        return token if encoding.token_to_chars(token)[0] >= char else token + 1

    labels = np.full(count, IGNORE_INDEX, dtype=np.int32)
    for start, end in spans:
        if start >= end:
            continue
        first, last = locate(start), locate(end)
        # The tokens holding the span's first and last characters, when they begin earlier.
        if first > 0 and encoding.token_to_chars(first - 1)[1] > start:
            if crossing == "split":
                return None
            first -= 1
        if crossing == "split" and last > 0 and encoding.token_to_chars(last - 1)[1] > end:
            return None  # (under "train", that token is already in first..last)
        labels[first:last] = ids[first:last]
    if runtime.bos_id is not None and count > 1 and ids[0] == ids[1] == runtime.bos_id:
        return Tokens(ids[1:], labels[1:], lambda char: max(locate(char) - 1, 0))
    return Tokens(ids, labels, locate)


def _tokenize_pieces(runtime: TokenizerRuntime, rendered: Rendered, spans: Sequence[Span],
                     literal_content: bool) -> Tokens:
    text = rendered.text
    content = rendered.literal_spans() if literal_content else []
    cuts = sorted({0, len(text), *(e for s in spans for e in s), *(e for s in content for e in s)})
    ids: List[np.ndarray] = []
    starts: List[np.ndarray] = []
    for begin, end in zip(cuts, cuts[1:]):
        if begin == end:
            continue
        inside_content = any(s <= begin and end <= e for s, e in content)
        encoding = runtime.encode_piece(text[begin:end], literal=inside_content)
        ids.append(np.asarray(encoding.ids, dtype=np.int32))
        starts.append(np.asarray([o[0] for o in encoding.offsets], dtype=np.int64) + begin)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    all_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    if runtime.bos_id is not None and len(all_ids) > 1 and all_ids[0] == all_ids[1] == runtime.bos_id:
        all_ids, all_starts = all_ids[1:], all_starts[1:]  # a template that wrote BOS twice
    labels = np.where(label_mask(all_starts, spans), all_ids, IGNORE_INDEX).astype(np.int32)
    return Tokens(all_ids, labels,
                  lambda char: int(np.searchsorted(all_starts, char, side="left")), segmented=True)

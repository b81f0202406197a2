"""Labels from the trained character spans of rendered texts, for a batch at once.

The whole rendered text is tokenized at once (`runtime.encode_texts`), so the ids are the
tokenizer's own ids of the text, as `apply_chat_template(..., tokenize=True)` gives them. For
byte-level BPE tokenizers (GPT-2 style: Llama 3, Qwen, DeepSeek, ...) every token stands for a
fixed byte string, so the byte offsets of a whole batch are one cumulative sum over a table of
token byte lengths, and labels for the batch are one `searchsorted`; an example whose token bytes
do not add up to its text (some other tokenizer) is labelled from the tokenizer's own character
offsets instead.

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
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from sftprep.tokenizer.runtime import Encoded, TokenizerRuntime, encode_texts

IGNORE_INDEX = -100  # the label of a token that is not trained (Hugging Face's convention)
Span = Tuple[int, int]
CROSSING = ("train", "split")  # what a token crossing a trained span's edge does (see above)


class Rendered(Protocol):
    """What labelling needs of a rendered example (`transforms.templates.Rendered` is one)."""

    text: str

    def literal_spans(self) -> Sequence[Span]:
        """The character ranges of data (message content) in `text`."""


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


def tokenize_batch(runtime: TokenizerRuntime, rendered: Sequence[Rendered],
                   spans: Sequence[Sequence[Span]], crossing: str = "train") -> List[Tokens]:
    """Tokenize each rendered text the per-example way and label the tokens of its trained
    spans (texts whose data spells a special token piece by piece)."""
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

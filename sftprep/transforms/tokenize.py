"""Tokenize rendered texts in batches and derive labels from the trained character spans.

The whole rendered text is tokenized at once (so tokens are what the model will see at
inference), with character offsets. Two cases fall back to tokenizing the text piece by piece:
- a token straddles the edge of a trained span, so no label can be exact: pieces are cut at
  those edges, which forces token boundaries there;
- message content spells a special token (`<|im_end|>`, the EOS, ...): content pieces are then
  tokenized with special-token matching off, so data can never forge a control token.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import threading
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from sftprep.transforms.templates import Rendered

IGNORE_INDEX = -100
Span = Tuple[int, int]


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

    def __init__(self, tokenizer, bos: str = ""):
        self.tokenizer = tokenizer
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

    @classmethod
    def from_json(cls, tokenizer_json: str, bos: str = "") -> "TokenizerRuntime":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(tokenizer_json), bos)

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
    """True for tokens whose first character lies inside one of the sorted, disjoint spans.

    >>> label_mask(np.array([0, 2, 5, 7]), [(2, 6)]).tolist()
    [False, True, True, False]
    """
    if not spans:
        return np.zeros(len(starts), dtype=bool)
    edges = np.asarray(spans, dtype=np.int64).reshape(-1)
    return (np.searchsorted(edges, starts, side="right") % 2) == 1


def find_hostile(runtime: TokenizerRuntime, rendered: Sequence[Rendered]) -> List[bool]:
    """Which texts have message content that spells a special token."""
    spells = runtime.spells_special_token
    return [any(spells(r.text, t.content_start, t.content_end)
                for t in r.turns if t.content_start >= 0) for r in rendered]


def plain_texts(rendered: Sequence[Rendered], hostile: Sequence[bool]) -> List[str]:
    """The texts tokenized whole in one batch call (hostile ones go piece by piece)."""
    return [r.text for r, h in zip(rendered, hostile) if not h]


def encode_texts(runtime: TokenizerRuntime, texts: Sequence[str]):
    return runtime.tokenizer.encode_batch(list(texts), add_special_tokens=False)


def tokenize_batch(runtime: TokenizerRuntime, rendered: Sequence[Rendered],
                   spans: Sequence[Sequence[Span]], hostile: Optional[Sequence[bool]] = None,
                   encodings: Optional[Sequence] = None) -> List[Tokens]:
    """Tokenize each rendered text and label the tokens that begin inside its trained spans.

    `hostile` and `encodings` may come precomputed (`find_hostile`, then `encode_texts` of
    `plain_texts`, e.g. on another thread while the previous batch is finished).
    """
    if hostile is None:
        hostile = find_hostile(runtime, rendered)
    if encodings is None:
        encodings = encode_texts(runtime, plain_texts(rendered, hostile))
    plain = [i for i, h in enumerate(hostile) if not h]
    out: List[Optional[Tokens]] = [None] * len(rendered)
    for i, encoding in zip(plain, encodings):
        out[i] = _from_encoding(runtime, encoding, len(rendered[i].text), spans[i])
        if out[i] is None:  # a token straddles a span edge
            out[i] = _tokenize_pieces(runtime, rendered[i], spans[i], literal_content=False)
    for i, is_hostile in enumerate(hostile):
        if is_hostile:
            out[i] = _tokenize_pieces(runtime, rendered[i], spans[i], literal_content=True)
    return out  # type: ignore[return-value]


def _from_encoding(runtime: TokenizerRuntime, encoding, length: int,
                   spans: Sequence[Span]) -> Optional[Tokens]:
    """Labels from a whole-text encoding, by looking up only the span edges (no per-token work)."""
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
        first, last = locate(start), locate(end)
        for edge, token in ((start, first), (end, last)):
            if 0 < token <= count and 0 < edge < length \
                    and encoding.token_to_chars(token - 1)[1] > edge:
                return None
        labels[first:last] = ids[first:last]
    if runtime.bos_id is not None and count > 1 and ids[0] == ids[1] == runtime.bos_id:
        return Tokens(ids[1:], labels[1:], lambda char: max(locate(char) - 1, 0))
    return Tokens(ids, labels, locate)


def _tokenize_pieces(runtime: TokenizerRuntime, rendered: Rendered, spans: Sequence[Span],
                     literal_content: bool) -> Tokens:
    text = rendered.text
    content = rendered.content_spans() if literal_content else []
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

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
import json
import re
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
    """The fast tokenizer as the workers use it: loaded from tokenizer.json, offsets untrimmed."""

    def __init__(self, tokenizer_json: str, bos: str = ""):
        from tokenizers import Tokenizer

        spec = json.loads(tokenizer_json)
        _untrim_offsets(spec)
        text = json.dumps(spec)
        self.tokenizer = Tokenizer.from_str(text)
        self.literal = Tokenizer.from_str(text)
        self.literal.encode_special_tokens = True
        self.special_strings = tuple(sorted(
            (t["content"] for t in spec.get("added_tokens", []) if t.get("special")),
            key=len, reverse=True))
        self._prefixes = tuple(sorted({s[:2] for s in self.special_strings}))
        self._special_re = re.compile("|".join(re.escape(s) for s in self.special_strings)) \
            if self.special_strings else None
        self.bos_id: Optional[int] = self.tokenizer.token_to_id(bos) if bos else None

    @classmethod
    def from_file(cls, path: str, bos: str = "") -> "TokenizerRuntime":
        with open(path, encoding="utf-8") as handle:
            return cls(handle.read(), bos)

    def spells_special_token(self, text: str) -> bool:
        if self._special_re is None or not any(p in text for p in self._prefixes):
            return False
        return self._special_re.search(text) is not None

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _untrim_offsets(spec: dict) -> None:
    """Byte-level components trim leading spaces from offsets by default; labels need the
    exact characters each token covers, so turn trimming off (token ids do not change)."""
    if isinstance(spec, dict):
        if "trim_offsets" in spec:
            spec["trim_offsets"] = False
        for value in spec.values():
            _untrim_offsets(value)
    elif isinstance(spec, list):
        for value in spec:
            _untrim_offsets(value)


def label_mask(starts: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """True for tokens whose first character lies inside one of the sorted, disjoint spans.

    >>> label_mask(np.array([0, 2, 5, 7]), [(2, 6)]).tolist()
    [False, True, True, False]
    """
    if not spans:
        return np.zeros(len(starts), dtype=bool)
    edges = np.asarray(spans, dtype=np.int64).reshape(-1)
    return (np.searchsorted(edges, starts, side="right") % 2) == 1


def tokenize_batch(runtime: TokenizerRuntime, rendered: Sequence[Rendered],
                   spans: Sequence[Sequence[Span]]) -> List[Tokens]:
    """Tokenize each rendered text and label the tokens that begin inside its trained spans."""
    hostile = [any(runtime.spells_special_token(r.text[s:e]) for s, e in r.content_spans())
               for r in rendered]
    plain = [i for i, h in enumerate(hostile) if not h]
    encodings = runtime.tokenizer.encode_batch([rendered[i].text for i in plain],
                                               add_special_tokens=False)
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
        tokenizer = runtime.literal if inside_content else runtime.tokenizer
        encoding = tokenizer.encode(text[begin:end], add_special_tokens=False)
        ids.append(np.asarray(encoding.ids, dtype=np.int32))
        starts.append(np.asarray([o[0] for o in encoding.offsets], dtype=np.int64) + begin)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    all_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    if runtime.bos_id is not None and len(all_ids) > 1 and all_ids[0] == all_ids[1] == runtime.bos_id:
        all_ids, all_starts = all_ids[1:], all_starts[1:]  # a template that wrote BOS twice
    labels = np.where(label_mask(all_starts, spans), all_ids, IGNORE_INDEX).astype(np.int32)
    return Tokens(all_ids, labels,
                  lambda char: int(np.searchsorted(all_starts, char, side="left")), segmented=True)

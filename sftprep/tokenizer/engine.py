"""Token ids for a batch of texts without tokenizers' per-text `Encoding`, where that is exact.

`tokenizers.Tokenizer.encode_batch` builds, for every text, an `Encoding` holding each token's
string, offsets and masks, and splits words with Oniguruma. The batch path needs only ids
(labels come from token byte lengths). tiktoken's BPE core returns ids only and splits with a
Rust regex: on the default tokenizer it needs about a quarter of the CPU for the same ids.

It is used only where it gives the same ids as the tokenizer itself, as far as can be checked
(the tests compare the two on real and random texts and on BPE pieces):
- a byte-level BPE model, no normalizer, no dropout, word prefixes/suffixes or byte fallback;
- merges rank as ids do (merge i makes a token whose id grows with i): tiktoken merges by the
  rank of the merged token, tokenizers by the rank of the merge;
- a pre-tokenizer this module can write as one regex (`PATTERNS`: DeepSeek V3/V4's three Splits
  then ByteLevel; Llama 3's and Qwen 2's Split; GPT-2's ByteLevel regex);
- added tokens without lstrip/rstrip/single_word, which match in the same places (`_ambiguous`).
Each `TokenizerRuntime` also checks the engine against the tokenizer as it goes (16 texts of
the first batch, the longest text of every batch: `runtime.py`), and a batch the engine fails
on (a text holding its separator, the regex's backtracking limit) is encoded by the tokenizer.
`SFTPREP_BPE_ENGINE=tokenizers` turns the engine off.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

ENGINE_ENV = "SFTPREP_BPE_ENGINE"

# DeepSeek V3/V4: Split(digits, 1-3) -> Split(CJK runs) -> Split(words...) -> ByteLevel, each
# Split "Isolated". As one regex: a text falls into zones (digits, CJK, everything else, "O");
# the word regex runs inside each zone, so its classes are cut to the zone, a lookahead that saw
# the end of a zone now sees the next zone's first character, and the runs of characters it
# leaves unmatched (kept as their own pieces by Split, dropped by tiktoken) get an alternative.
_CJK = r"\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff"
_DEEPSEEK_SPLITS = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",  # as tokenizer.json has it: the characters
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^""" "\r\n" r"""\p{L}\p{P}\p{S}]?"""
    r"""[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[""" "\r\n" r"""]*|\s*[""" "\r\n" r"""]+|\s+(?!\S)|\s+""",
)
_DEEPSEEK_ALTERNATIVES = (
    r"\p{N}{1,3}",
    # inside a CJK run (kana include marks, punctuation and unassigned points)
    rf"[[{_CJK}]&&[^\p{{L}}\p{{P}}\p{{S}}]]?[[{_CJK}]&&[\p{{L}}\p{{M}}]]+",
    rf"[[{_CJK}]&&[\p{{P}}\p{{S}}]]+",
    rf"(?:[[{_CJK}]&&[^\p{{L}}\p{{M}}\p{{P}}\p{{S}}]](?![[{_CJK}]&&[\p{{L}}\p{{M}}]]))+",
    # everywhere else
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+""",
    rf"[^\r\n\p{{L}}\p{{P}}\p{{S}}\p{{N}}{_CJK}]?[[\p{{L}}\p{{M}}]--[{_CJK}]]+",
    rf" ?[[\p{{P}}\p{{S}}]--[{_CJK}]]+[\r\n]*",
    r"\s*[\r\n]+",
    rf"\s+(?![^\s\p{{N}}{_CJK}])",
    r"\s+",
    rf"(?:[^\s\p{{L}}\p{{M}}\p{{P}}\p{{S}}\p{{N}}{_CJK}](?![[\p{{L}}\p{{M}}]--[{_CJK}]]))+",
)
_DEEPSEEK_PATTERN = "|".join(_DEEPSEEK_ALTERNATIVES)
# One Split whose alternatives match every character (so Split leaves no unmatched run, and
# tiktoken drops nothing) is its own single regex: Llama 3 (and OpenAI's cl100k), Qwen 2.
_SPACES = (r"\s+(?!\S)", r"\s+")
_LLAMA3_WORDS = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", r"[^\r\n\p{L}\p{N}]?\p{L}+", r"\p{N}{1,3}",
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*", r"\s*[\r\n]+")
_QWEN2_WORDS = tuple(a.replace(r"\p{N}{1,3}", r"\p{N}") for a in _LLAMA3_WORDS)
_LLAMA3_SPLIT = "|".join(_LLAMA3_WORDS + _SPACES)
_QWEN2_SPLIT = "|".join(_QWEN2_WORDS + _SPACES)
# GPT-2's ByteLevel pre-tokenizer with use_regex (RoBERTa, GPT-J, Falcon, ...): its own regex.
_GPT2_BYTE_LEVEL = "ByteLevel(use_regex)"
_GPT2_WORDS = (r"'s|'t|'re|'ve|'m|'ll|'d", r" ?\p{L}+", r" ?\p{N}+", r" ?[^\s\p{L}\p{N}]+")
_GPT2_PATTERN = "|".join(_GPT2_WORDS + _SPACES)


def _grouped(first: Sequence[str], rest: Sequence[str]) -> str:
    """`first` then `rest` as one regex, the alternatives of `first` (none with a lookaround)
    in a group of their own.

    It matches as "|".join([*first, *rest]) does (a group tries its alternatives in order, as
    the bare alternation would), and is faster in tiktoken: its regex library (fancy-regex) runs
    a pattern with a lookahead in a backtracking VM that tries each top-level alternative with a
    call of its own, and hands a group without lookarounds to the regex crate as one call. On
    the benchmark's 20k-record corpora the ids took 2.0 x less CPU with the default tokenizer's
    (DeepSeek's) regex and 1.3 to 1.9 x less with the other three (`bench/split_regex.py`).
    """
    return "(?:" + "|".join(first) + ")|" + "|".join(rest)


# Pre-tokenizers (their Split patterns, in order) -> the single regex that splits the same way.
# DeepSeek's lookahead alternative inside a CJK run (the fourth) goes after the four that follow
# it: it starts only on a CJK character, on which none of them can start, so at any place where
# it matches they cannot, and the first alternative to match stays the same.
PATTERNS: Dict[Tuple[str, ...], str] = {
    _DEEPSEEK_SPLITS: _grouped(_DEEPSEEK_ALTERNATIVES[:3] + _DEEPSEEK_ALTERNATIVES[4:8],
                               _DEEPSEEK_ALTERNATIVES[3:4] + _DEEPSEEK_ALTERNATIVES[8:]),
    (_LLAMA3_SPLIT,): _grouped(_LLAMA3_WORDS, _SPACES),
    (_QWEN2_SPLIT,): _grouped(_QWEN2_WORDS, _SPACES),
    (_GPT2_BYTE_LEVEL,): _grouped(_GPT2_WORDS, _SPACES),
}


def _byte_table() -> Dict[int, int]:
    """`str.translate` table from byte-level BPE's printable characters back to the bytes they
    stand for (GPT-2's table), so that `token.translate(table).encode("latin-1")` is its bytes."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    others = [byte for byte in range(256) if byte not in printable]  # as 256, 257, ... in order
    return {**{byte: byte for byte in printable}, **{256 + i: b for i, b in enumerate(others)}}


def unsupported_reason(config: dict) -> Optional[str]:
    """Why a tokenizer (its tokenizer.json, parsed) cannot use the engine; None when it can."""
    model = config.get("model") or {}
    if model.get("type") != "BPE":
        return "not a BPE model"
    if model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("byte_fallback"):
        return "BPE options the engine does not reproduce"
    normalizer = config.get("normalizer")
    if normalizer and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        return "has a normalizer"
    if _split_patterns(config.get("pre_tokenizer")) not in PATTERNS:
        return "a pre-tokenizer the engine has no exact regex for"
    if (config.get("decoder") or {}).get("type") != "ByteLevel":
        return "not byte-level"
    added = config.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return "added tokens with lstrip/rstrip/single_word"
    if _ambiguous(added):
        return "added tokens that overlap each other"
    vocab = model.get("vocab") or {}
    previous = -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        made = vocab.get(left + right)
        if made is None or made < previous:  # equal: several splits of one token (tiktoken)
            return "merges not ranked in id order"
        previous = made
    return None


def _split_patterns(pre_tokenizer: Optional[dict]) -> Optional[Tuple[str, ...]]:
    """The Split regexes of a Sequence of Isolated Splits ending in a plain ByteLevel, or
    `(_GPT2_BYTE_LEVEL,)` for a ByteLevel that splits with GPT-2's regex; None otherwise."""
    if not pre_tokenizer:
        return None
    steps = [pre_tokenizer] if pre_tokenizer.get("type") != "Sequence" \
        else pre_tokenizer.get("pretokenizers") or []
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        return None
    *splits, last = steps
    if last.get("use_regex", True):
        return (_GPT2_BYTE_LEVEL,) if not splits else None
    patterns = []
    for split in splits:
        if split.get("type") != "Split" or split.get("behavior") != "Isolated" \
                or split.get("invert") or "Regex" not in (split.get("pattern") or {}):
            return None
        patterns.append(split["pattern"]["Regex"])
    return tuple(patterns) or None


def _ambiguous(added: Sequence[dict]) -> bool:
    """Whether where added tokens match could differ between tokenizers and tiktoken.

    tiktoken takes the leftmost added token; tokenizers takes the leftmost among the tokens with
    `normalized` false first, then among the others in what is left. The two agree unless two
    tokens can start at the same place (one is a prefix of the other), or a `normalized` token
    can be cut by one that is not starting inside it.

    >>> tokens = lambda *pairs: [{"content": c, "normalized": n} for c, n in pairs]
    >>> _ambiguous(tokens(("<a>", False), ("<b>", True)))
    False
    >>> _ambiguous(tokens(("<a>", False), ("<a>x", False)))
    True
    >>> _ambiguous(tokens(("ab|", False), ("|c", True))), _ambiguous(tokens(("ab|", True), ("|c", False)))
    (False, True)
    """
    normalized = {t["content"]: bool(t.get("normalized")) for t in added}
    ordered = sorted(normalized)
    if len(ordered) < len(added) or "" in normalized \
            or any(b.startswith(a) for a, b in zip(ordered, ordered[1:])):
        return True  # (a token that is a prefix of another sorts right before one such)
    firsts = {token[0] for token in ordered}
    for token in ordered:
        if not normalized[token] or not any(char in firsts for char in token[1:]):
            continue
        for start in range(1, len(token)):
            rest = token[start:]
            if any(not normalized[other] and (other.startswith(rest) or rest.startswith(other))
                   for other in ordered if other[0] == rest[0]):
                return True
    return False


class FastBPE:
    """tiktoken's BPE core set up to give a tokenizer's own ids (see the module docstring).

    A batch is encoded in one call per thread: its texts joined by a separator registered as
    an added token. Added tokens end the stretch of text the word regex runs over, exactly as
    the end of a text does, so each text gets the ids it would get alone; the separator's ids
    then mark where each text's ids end.
    """

    _SEPARATOR = "\0<sftprep:text-boundary>\0"

    def __init__(self, config: dict):
        import tiktoken

        table = _byte_table()
        added = {t["content"]: int(t["id"]) for t in config.get("added_tokens") or []}
        vocab = {token: index for token, index in config["model"]["vocab"].items()
                 if token not in added}
        ranks = {token.translate(table).encode("latin-1"): int(index)
                 for token, index in vocab.items()}
        if len(ranks) != len(vocab) or any(bytes([byte]) not in ranks for byte in range(256)):
            raise ValueError("not a byte-level vocabulary (a byte without its token)")
        self._separator_id = max([*ranks.values(), *added.values()]) + 1
        special = {**added, self._SEPARATOR: self._separator_id}
        pattern = PATTERNS[_split_patterns(config["pre_tokenizer"])]
        self._encoding = tiktoken.Encoding("sftprep", pat_str=pattern, mergeable_ranks=ranks,
                                           special_tokens=special)
        self._core = self._encoding._core_bpe
        self._allowed = frozenset(special)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_size = 0

    @classmethod
    def for_tokenizer(cls, tokenizer_json: str) -> Optional["FastBPE"]:
        """The engine for a tokenizer.json text, or None where it cannot be exact (or is off)."""
        if os.environ.get(ENGINE_ENV, "auto") == "tokenizers":
            return None
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            return None
        config = json.loads(tokenizer_json)
        if unsupported_reason(config) is not None \
                or any("\0" in t["content"] for t in config.get("added_tokens") or []):
            return None
        try:
            return cls(config)
        except ValueError:  # not a byte-level vocabulary (UnicodeEncodeError is a ValueError)
            return None

    def encode(self, texts: Sequence[str], threads: int = 1
               ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(ids int32, offsets int64): text i's ids are ids[offsets[i]:offsets[i + 1]]. None when
        a text contains the separator or the regex gives up (backtracking limit)."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(1, np.int64)
        parts = max(1, min(threads, len(texts) // 64))
        step = -(-len(texts) // parts)
        chunks = [texts[start:start + step] for start in range(0, len(texts), step)]
        if len(chunks) > 1:
            if self._pool_size < len(chunks):
                self._pool = ThreadPoolExecutor(len(chunks), thread_name_prefix="sftprep-bpe")
                self._pool_size = len(chunks)
            results = list(self._pool.map(self._encode_joined, chunks))
        else:
            results = [self._encode_joined(chunks[0])]
        if any(result is None for result in results):
            return None
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([lengths for _, lengths in results]), out=offsets[1:])
        return np.concatenate([ids for ids, _ in results]).astype(np.int32), offsets

    def _encode_joined(self, texts: Sequence[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """A chunk's ids (separators dropped) and the number of ids of each text."""
        joined = self._SEPARATOR.join(texts)
        if joined.count(self._SEPARATOR) != len(texts) - 1:
            return None
        try:
            buffer = self._core.encode_to_tiktoken_buffer(joined, self._allowed)
        except Exception:  # e.g. the regex's backtracking limit, on pathological text
            return None
        ids = np.frombuffer(buffer, dtype=np.uint32)
        separators = np.flatnonzero(ids == self._separator_id)
        if len(separators) != len(texts) - 1:
            return None
        ends = np.append(separators, len(ids))
        lengths = np.diff(ends, prepend=-1) - 1  # (as if a separator stood before the first)
        return ids[ids != self._separator_id], lengths

"""Fit a tokenized example into --max-length with a named policy. Tokens and labels move together.

Policies (`fit` dispatches on the name):
- keep_completion: cut prompt content tokens from the left (never the system message or the
  template's framing); if still too long, cut the end of the final assistant turn.
- drop_oldest_turns: remove the fewest oldest exchanges (system kept) that make the dialogue
  fit, re-rendered and re-tokenized by the caller's `retokenize`; then keep_completion.
- truncate_right: cut the end of the whole sequence.
- drop: drop the example.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from sftprep.transforms.records import Conversation, split_system
from sftprep.transforms.templates import Rendered
from sftprep.tokenizer.labels import IGNORE_INDEX, Tokens

POLICIES = ("keep_completion", "drop_oldest_turns", "truncate_right", "drop")
# A conversation rendered and tokenized again, or None when the template cannot render it.
Retokenize = Callable[[Conversation], Optional[Tuple[Rendered, Tokens]]]


class Truncation(str, enum.Enum):
    """What a policy did to fit an example; a row's are written comma-joined (`truncation`)."""

    OLDEST_TURNS_DROPPED = "oldest_turns_dropped"
    PROMPT_TRUNCATED = "prompt_truncated"
    COMPLETION_TRUNCATED = "completion_truncated"
    TRUNCATED_RIGHT = "truncated_right"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Fitted:
    tokens: Tokens
    reasons: Tuple[Truncation, ...] = ()  # empty when it fit as it was


@dataclasses.dataclass(frozen=True)
class Dropped:
    reason: str
    detail: str


def fit(tokens: Tokens, rendered: Rendered, policy: str, max_length: int,
        conv: Optional[Conversation] = None,
        retokenize: Optional[Retokenize] = None) -> Union[Fitted, Dropped]:
    """Fit an example with a --truncation policy; drop_oldest_turns needs the conversation
    the example renders and a way to render and tokenize a shorter one."""
    length = len(tokens.input_ids)
    if length <= max_length:
        return Fitted(tokens)
    if policy == "drop":
        return Dropped("too_long", f"{length} tokens > --max-length {max_length}")
    if policy == "truncate_right":
        return Fitted(_take(tokens, np.arange(max_length)), (Truncation.TRUNCATED_RIGHT,))
    if policy == "keep_completion":
        return truncate_keep_completion(tokens, rendered, max_length)
    if policy == "drop_oldest_turns":
        if conv is None or retokenize is None:
            raise ValueError("drop_oldest_turns re-renders: fit needs conv and retokenize")
        return truncate_drop_oldest_turns(conv, rendered, tokens, max_length, retokenize)
    raise ValueError(f"unknown truncation policy {policy!r}; one of {', '.join(POLICIES)}")


def truncate_drop_oldest_turns(conv: Conversation, rendered: Rendered, tokens: Tokens,
                               max_length: int, retokenize: Retokenize) -> Union[Fitted, Dropped]:
    """Remove the fewest oldest exchanges that make the dialogue fit; when even the shortest
    does not, keep_completion on it. A dialogue with one exchange, or whose shortened forms
    the template cannot render, is fitted whole by keep_completion."""
    shorter = fewest_exchanges_dropped(conv, rendered, tokens, max_length, retokenize)
    if shorter is None:
        return truncate_keep_completion(tokens, rendered, max_length)
    rendered, tokens = shorter
    result = Fitted(tokens) if len(tokens.input_ids) <= max_length \
        else truncate_keep_completion(tokens, rendered, max_length)
    if isinstance(result, Dropped):
        return result
    return Fitted(result.tokens, (Truncation.OLDEST_TURNS_DROPPED, *result.reasons))


def fewest_exchanges_dropped(conv: Conversation, rendered: Rendered, tokens: Tokens,
                             max_length: int, retokenize: Retokenize
                             ) -> Optional[Tuple[Rendered, Tokens]]:
    """The dialogue re-rendered and re-tokenized without the fewest oldest exchanges that make
    it fit (all but the last when none does), or None when it has one exchange or the template
    cannot render the chosen form.

    The same outcome as dropping one exchange at a time until it fits, in near-linear time:
    the whole dialogue's token positions estimate the count, one re-render confirms it (and one
    more that a count lower does not fit), and a binary search settles an estimate that was off.
    The search relies on length falling as exchanges go; a shortened dialogue the template
    cannot render counts as not fitting.
    """
    most = len(exchange_starts(conv)) - 1
    if most < 1:
        return None
    tried: Dict[int, Optional[Tuple[Rendered, Tokens]]] = {}

    def attempt(count: int) -> Optional[Tuple[Rendered, Tokens]]:
        if count not in tried:
            tried[count] = retokenize(without_oldest_exchanges(conv, count))
        return tried[count]

    def fits(count: int) -> bool:
        result = attempt(count)
        return result is not None and len(result[1].input_ids) <= max_length

    guess = estimate_exchanges_to_drop(conv, rendered, tokens, max_length)
    return attempt(fewest_that_fit(fits, guess, most))


def truncate_keep_completion(tokens: Tokens, rendered: Rendered,
                             max_length: int) -> Union[Fitted, Dropped]:
    """Remove the leftmost prompt-content tokens so the completion fits whole.

    Prompt content is the content of every non-system turn before the final assistant turn;
    everything else before the completion (system message, framing) is fixed. When the
    completion alone does not fit, the prompt keeps its most recent tokens, up to half of the
    room the fixed part leaves, and the completion is cut at its end.
    """
    length = len(tokens.input_ids)
    final = max((i for i, t in enumerate(rendered.turns) if t.role == "assistant"), default=-1)
    prompt_content = [(t.content_start, t.content_end) for t in rendered.turns[:final]
                      if t.role != "system" and t.content_start >= 0 and t.content_end > t.content_start]
    cuttable = np.fromiter((i for span in prompt_content for i in tokens.token_range(span)),
                           dtype=np.int64)
    completion_start = rendered.turns[final].start if final >= 0 else len(rendered.text)
    completion = length - tokens.locate(completion_start)
    fixed = length - completion - len(cuttable)
    if fixed >= max_length:
        return Dropped("cannot_fit", f"{length} tokens; the framing and system message alone "
                                     f"fill --max-length {max_length}")
    if fixed + completion <= max_length:
        remove = length - max_length
    else:
        remove = len(cuttable) - min(len(cuttable), (max_length - fixed) // 2)
    keep = np.ones(length, dtype=bool)
    keep[cuttable[:remove]] = False
    kept = np.flatnonzero(keep)
    reasons: Tuple[Truncation, ...] = (Truncation.PROMPT_TRUNCATED,) if remove else ()
    if len(kept) > max_length:
        kept = kept[:max_length]
        reasons += (Truncation.COMPLETION_TRUNCATED,)
    return Fitted(_take(tokens, kept), reasons)


def _take(tokens: Tokens, index: np.ndarray) -> Tokens:
    return dataclasses.replace(tokens, input_ids=tokens.input_ids[index],
                               labels=tokens.labels[index])


def exchange_starts(conv: Conversation) -> Tuple[int, ...]:
    """Indexes (into conv.messages) of the user turns after the system message: exchange k
    starts at the k-th. Dropping k exchanges keeps the system message and the messages from
    the k-th user turn on.

    >>> from sftprep.transforms.records import Message
    >>> exchange_starts(Conversation((Message("system", "s"), Message("user", "a"),
    ...     Message("assistant", "b"), Message("user", "c"), Message("assistant", "d"))))
    (1, 3)
    """
    offset = 1 if conv.messages and conv.messages[0].role == "system" else 0
    return tuple(i for i, m in enumerate(conv.messages) if i >= offset and m.role == "user")


def without_oldest_exchanges(conv: Conversation, count: int) -> Conversation:
    """The conversation without its `count` oldest exchanges (system kept); 0 < count <
    len(exchange_starts(conv))."""
    system, _ = split_system(conv.messages)
    kept = conv.messages[exchange_starts(conv)[count]:]
    return dataclasses.replace(conv, messages=((system,) if system else ()) + tuple(kept))


def estimate_exchanges_to_drop(conv: Conversation, rendered: Rendered, tokens: Tokens,
                               max_length: int) -> int:
    """How many oldest exchanges to drop so the example fits, from the token positions of the
    whole dialogue's turns: the fewest whose tokens bring it to `max_length` or below (capped
    at all but the last exchange). An estimate: a template may frame the new first turn
    differently; 1 when the turns' positions are unknown.
    """
    starts = exchange_starts(conv)
    most = len(starts) - 1
    offset = len(rendered.turns) - len(conv.messages)  # a turn the template added (tools)
    first_message = 1 if conv.messages and conv.messages[0].role == "system" else 0
    if most < 1 or offset not in (0, 1) or first_message >= len(conv.messages):
        return 1
    chars = [rendered.turns[first_message + offset].start] + \
        [rendered.turns[i + offset].start for i in starts[1:]]
    if min(chars) < 0 or chars != sorted(chars):
        return 1
    positions = np.fromiter((tokens.locate(c) for c in chars), np.int64, len(chars))
    lengths = len(tokens.input_ids) - (positions[1:] - positions[0])
    fitting = np.flatnonzero(lengths <= max_length)
    return int(fitting[0]) + 1 if len(fitting) else most


def fewest_that_fit(fits: Callable[[int], bool], guess: int, most: int) -> int:
    """The smallest count in [1, most] for which `fits` holds, `most` when none does; `fits`
    must be monotonic (once true, true for every larger count). Starts from `guess`: an exact
    guess costs two calls (guess and guess - 1), a wrong one a binary search more.

    >>> calls = []
    >>> fewest_that_fit(lambda n: calls.append(n) or n >= 37, guess=37, most=5000), calls
    (37, [37, 36])
    >>> fewest_that_fit(lambda n: n >= 37, guess=1, most=5000)
    37
    >>> fewest_that_fit(lambda n: False, guess=3, most=9)
    9
    """
    guess = min(max(guess, 1), most)
    if fits(guess):
        if guess == 1 or not fits(guess - 1):
            return guess
        low, high = 1, guess - 1  # the answer lies in [low, high], and high fits
    elif guess < most and fits(most):
        low, high = guess + 1, most
    else:
        return most
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return high


def trainable_count(tokens: Tokens) -> int:
    return int(np.count_nonzero(tokens.labels != IGNORE_INDEX))

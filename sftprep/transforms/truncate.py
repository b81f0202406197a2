"""Fit a tokenized example into --max-length with a named policy. Tokens and labels move together.

Policies (`drop_oldest_turns` re-renders, so the orchestrator drives it with `drop_oldest_exchange`):
- keep_completion: cut prompt content tokens from the left (never the system message or the
  template's framing); if still too long, cut the end of the final assistant turn.
- truncate_right: cut the end of the whole sequence.
- drop: drop the example.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import numpy as np

from sftprep.transforms.records import Conversation, split_system
from sftprep.transforms.templates import Rendered
from sftprep.transforms.tokenize import IGNORE_INDEX, Tokens

POLICIES = ("keep_completion", "drop_oldest_turns", "truncate_right", "drop")


@dataclasses.dataclass(frozen=True)
class Fitted:
    tokens: Tokens
    reasons: Tuple[str, ...] = ()  # e.g. ("prompt_truncated",); empty when it fit as is


@dataclasses.dataclass(frozen=True)
class Dropped:
    reason: str
    detail: str


def fit(tokens: Tokens, rendered: Rendered, policy: str, max_length: int) -> Union[Fitted, Dropped]:
    """Apply a token-level policy (`drop_oldest_turns` ends here with keep_completion)."""
    length = len(tokens.input_ids)
    if length <= max_length:
        return Fitted(tokens)
    if policy == "drop":
        return Dropped("too_long", f"{length} tokens > --max-length {max_length}")
    if policy == "truncate_right":
        return Fitted(_take(tokens, np.arange(max_length)), ("truncated_right",))
    return truncate_keep_completion(tokens, rendered, max_length)


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
    reasons: Tuple[str, ...] = ("prompt_truncated",) if remove else ()
    if len(kept) > max_length:
        kept = kept[:max_length]
        reasons += ("completion_truncated",)
    return Fitted(_take(tokens, kept), reasons)


def _take(tokens: Tokens, index: np.ndarray) -> Tokens:
    return dataclasses.replace(tokens, input_ids=tokens.input_ids[index],
                               labels=tokens.labels[index])


def drop_oldest_exchange(conv: Conversation) -> Optional[Conversation]:
    """The conversation without its oldest user exchange (system kept), or None if only one is left.

    An exchange is a user turn with everything that follows it up to the next user turn.
    """
    system, rest = split_system(conv.messages)
    user_turns = [i for i, m in enumerate(rest) if m.role == "user"]
    if len(user_turns) < 2:
        return None
    kept = rest[user_turns[1]:]
    return dataclasses.replace(conv, messages=((system,) if system else ()) + tuple(kept))


def trainable_count(tokens: Tokens) -> int:
    return int(np.count_nonzero(tokens.labels != IGNORE_INDEX))

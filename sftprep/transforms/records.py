"""The record types that flow between stages, and the one place a conversation is validated.

A raw input line becomes a `RawRecord`; parsing and normalization turn it into a `Conversation`
or a `Rejection`; rendering, tokenization and truncation turn a conversation into an `Example`
or a `Rejection` (a drop). Expected data defects are values with a reason code, never exceptions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional, Sequence, Tuple, Union

ROLES = ("system", "user", "assistant", "tool")
# --max-messages: a dialogue longer than this is rejected (too_many_messages). Long agent
# trajectories run to hundreds or a few thousand turns; 10,000 leaves room for those while
# keeping one record's per-turn work (rendering, spans, truncation) bounded.
DEFAULT_MAX_MESSAGES = 10_000

# Reason codes (docs/output.md): rejections are records that could not become a conversation,
# drops conversations that could not become a trainable example; both land in rejected/, as do
# duplicates, under this reason.
DUPLICATE_REASON = "duplicate"


# The records built several times per input record (RawRecord, Message, Conversation) are
# frozen dataclasses with a hand-written __init__: the generated one of a frozen dataclass sets
# each field through object.__setattr__, about twice the cost of storing into the instance's
# __dict__. Signatures and defaults are the fields' (test_records.py checks that); equality,
# hashing, repr, replace and "frozen" are the dataclass's own.


@dataclasses.dataclass(frozen=True, init=False)
class RawRecord:
    """One input record as read: its text, or the reason it could not even be read.

    `line` is the 1-based line of a `.jsonl` file, or the 1-based element index of a `.json`
    array. `error` is set when the reader already knows the record is unusable.
    """

    source: str
    line: int
    text: str
    error: Optional[str] = None
    detail: str = ""

    def __init__(self, source: str, line: int, text: str, error: Optional[str] = None,
                 detail: str = "") -> None:
        fields = self.__dict__
        fields["source"], fields["line"], fields["text"] = source, line, text
        fields["error"], fields["detail"] = error, detail


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One tool call. `arguments` is the canonical JSON text of the arguments object:
    `json.dumps(obj, ensure_ascii=False)` with the keys in the order the data gives them, the
    same whether the data gave an object or a JSON string of one."""

    name: str
    arguments: str
    # The arguments object `arguments` was written from, kept so rendering does not parse the
    # text again (None: parse it); not part of the value.
    parsed: Optional[dict] = dataclasses.field(default=None, compare=False, repr=False)

    def arguments_value(self) -> dict:
        return json.loads(self.arguments) if self.parsed is None else self.parsed

    def as_json(self) -> str:
        """`{"name": ..., "arguments": ...}` as json.dumps writes it, from the canonical text."""
        return f'{{"name": {json.dumps(self.name, ensure_ascii=False)}, "arguments": {self.arguments}}}'


@dataclasses.dataclass(frozen=True, init=False)
class Message:
    """One turn. `trainable=None` means "decided by the role and --train-on"; False never trains.

    `reasoning` is an assistant turn's reasoning trace (the text a model writes inside
    `<think>...</think>` before its answer), "" when there is none; Jinja templates receive it
    as `reasoning_content`.
    """

    role: str
    content: str
    tool_calls: Tuple[ToolCall, ...] = ()
    trainable: Optional[bool] = None
    reasoning: str = ""

    def __init__(self, role: str, content: str, tool_calls: Tuple[ToolCall, ...] = (),
                 trainable: Optional[bool] = None, reasoning: str = "") -> None:
        fields = self.__dict__
        fields["role"], fields["content"], fields["tool_calls"] = role, content, tool_calls
        fields["trainable"], fields["reasoning"] = trainable, reasoning


@dataclasses.dataclass(frozen=True, init=False)
class Conversation:
    messages: Tuple[Message, ...]
    tools: str = ""  # canonical JSON text of the tool definitions, "" when none
    source: str = ""
    line: int = 0
    dialect: str = ""

    def __init__(self, messages: Tuple[Message, ...], tools: str = "", source: str = "",
                 line: int = 0, dialect: str = "") -> None:
        fields = self.__dict__
        fields["messages"], fields["tools"], fields["source"] = messages, tools, source
        fields["line"], fields["dialect"] = line, dialect

    def example_id(self) -> str:
        """Content hash of the normalized conversation (not of where it came from).

        Fields are joined with ASCII separators, which normalized text cannot contain, so the
        payload is unambiguous without the cost of JSON encoding.
        """
        parts = [self.tools]
        for m in self.messages:
            calls = "\x1d".join([f"{c.name}\x1c{c.arguments}" for c in m.tool_calls]) \
                if m.tool_calls else ""
            part = f"{m.role}\x1f{m.trainable}\x1f{calls}\x1f{m.content}"
            # Only a turn with reasoning hashes it, so ids of data without reasoning stay as they were.
            parts.append(f"{part}\x1f{m.reasoning}" if m.reasoning else part)
        return hashlib.sha256("\x1e".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A record that was not used, with its reason code and a human-readable detail."""

    source: str
    line: int
    reason: str
    detail: str
    raw: Optional[str]

    def as_row(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason,
                "detail": self.detail, "raw": self.raw}


def validate_conversation(conv: Conversation, max_messages: int = DEFAULT_MAX_MESSAGES
                          ) -> Union[Conversation, Tuple[str, str]]:
    """Check the structural rules every template relies on; return the conversation or (reason, detail).

    Rules: at most `max_messages` messages; known roles; a system message only first; every
    message has text, reasoning or tool calls; at least one assistant turn. Trailing
    non-assistant turns carry nothing to train on and are removed (the record itself is kept).
    """
    messages = list(conv.messages)
    if len(messages) > max_messages:
        return "too_many_messages", f"{len(messages)} messages > --max-messages {max_messages}"
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            return "unknown_role", f"message {index} has role {message.role!r}"
        if message.role == "system" and index != 0:
            return "misplaced_system", f"message {index} is a system message after the first turn"
        if not message.content and not message.tool_calls and not message.reasoning:
            return "empty_content", f"message {index} ({message.role}) is empty"
    while messages and messages[-1].role != "assistant":
        messages.pop()
    if not messages:
        return "no_assistant_turn", "the conversation has no assistant turn"
    if len(messages) != len(conv.messages):
        conv = dataclasses.replace(conv, messages=tuple(messages))
    return conv


def split_system(messages: Sequence[Message]) -> Tuple[Optional[Message], Tuple[Message, ...]]:
    if messages and messages[0].role == "system":
        return messages[0], tuple(messages[1:])
    return None, tuple(messages)

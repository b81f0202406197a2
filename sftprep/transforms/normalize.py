"""Normalize a parsed conversation: text, role names, and role markers written inside prompts.

>>> normalize_text("  Caf\\u0065\\u0301\\r\\nbar\\x00 ")
'Café\\nbar'
>>> split_role_markers("<|USER|> Hi\\n<|ASSISTANT|> Hello\\n<|USER|> More?\\n<|ASSISTANT|>")
[('user', 'Hi'), ('assistant', 'Hello'), ('user', 'More?')]
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import List, Tuple, Union

from sftprep.transforms.records import (
    DEFAULT_MAX_MESSAGES, Conversation, Message, validate_conversation)

REASONING = ("keep", "drop")  # --reasoning

ROLE_ALIASES = {
    "system": "system", "sys": "system",
    "user": "user", "human": "user", "prompter": "user", "question": "user", "usr": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "ai": "assistant", "answer": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool",
    "tool_response": "tool", "function_response": "tool",
}

# The seed data's dialogue markers. Only prompts of prompt/completion records are split on them;
# inside any message content they are plain text.
ROLE_MARKERS = {"<|SYSTEM|>": "system", "<|USER|>": "user", "<|ASSISTANT|>": "assistant"}
_MARKER_RE = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS))
# C0 and C1 controls except tab and newline, plus the byte-order mark and lone surrogates.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Either of the above, found in one pass. NFC neither makes nor removes these characters (none
# has a canonical decomposition or is one's part), so checking before NFC is checking after it.
_CONTROL_OR_SURROGATE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
# _CONTROL_RE's characters below U+0080, for pure-ASCII text (a bytes translate beats the regex).
_ASCII_CONTROLS = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"


class NormalizeError(ValueError):
    pass


def normalize_text(text: str) -> str:
    """NFC, LF newlines, no control characters or BOM, no surrounding whitespace.

    Pure-ASCII text is already NFC, and is checked for controls byte-wise (C speed); other text
    is scanned once for controls and lone surrogates together, and only text holding one goes
    the long way.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii():
        if len(text.encode("ascii").translate(None, _ASCII_CONTROLS)) != len(text):
            text = _CONTROL_RE.sub("", text)
        return text.strip()
    if not _CONTROL_OR_SURROGATE_RE.search(text):
        return unicodedata.normalize("NFC", text).strip()
    if _SURROGATE_RE.search(text):
        raise NormalizeError("text contains a lone UTF-16 surrogate")
    return _CONTROL_RE.sub("", unicodedata.normalize("NFC", text)).strip()


def normalize_role(role: str) -> str:
    return ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())


def split_role_markers(prompt: str) -> List[Tuple[str, str]]:
    """Split a prompt written with `<|USER|>`-style markers into (role, text) turns.

    Text before the first marker becomes a system turn. A final empty assistant marker is the
    slot the completion fills, so it is dropped.
    """
    turns: List[Tuple[str, str]] = []
    matches = list(_MARKER_RE.finditer(prompt))
    head = prompt[: matches[0].start()].strip() if matches else prompt
    if head:
        turns.append(("system" if matches else "user", head))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(prompt)
        turns.append((ROLE_MARKERS[match.group()], prompt[match.end():end].strip()))
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()
    return turns


def normalize_conversation(conv: Conversation, max_messages: int = DEFAULT_MAX_MESSAGES,
                           reasoning: str = "keep") -> Union[Conversation, Tuple[str, str]]:
    """Normalize every message; return the conversation or (reason, detail) for a rejection.

    An assistant turn's reasoning is normalized like its content; `reasoning="drop"` removes it.
    """
    try:
        messages: List[Message] = []
        for message in conv.messages:
            role = normalize_role(message.role)
            if conv.dialect == "prompt_completion" and role == "user" \
                    and "<|" in message.content and _MARKER_RE.search(message.content):
                messages.extend(_marker_turns(message.content))
                continue
            thought = normalize_text(message.reasoning) \
                if message.reasoning and reasoning == "keep" else ""
            content = normalize_text(message.content)
            if role == message.role and content == message.content \
                    and thought == message.reasoning:
                messages.append(message)  # already normal: the same (frozen) message
                continue
            messages.append(Message(role, content, message.tool_calls, message.trainable, thought))
        if len(messages) >= 2 and messages[-2].role == "assistant" \
                and messages[-2].trainable is False and messages[-1].role == "assistant":
            # The prompt ended inside an assistant turn that the completion continues.
            prefix, completion = messages[-2], messages.pop()
            messages[-1] = dataclasses.replace(
                completion, content=f"{prefix.content} {completion.content}".strip())
        tools = normalize_text(conv.tools) if conv.tools else ""
    except NormalizeError as err:
        return "invalid_utf8", str(err)
    return validate_conversation(
        Conversation(tuple(messages), tools, conv.source, conv.line, conv.dialect), max_messages)


def _marker_turns(prompt: str) -> List[Message]:
    """Turns written inside a prompt are context: they are never trained (except --train-on all)."""
    return [Message(role, normalize_text(text), trainable=False)
            for role, text in split_role_markers(prompt)]

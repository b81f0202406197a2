"""Normalization: text, role names, role markers inside prompts, structural validation."""

from __future__ import annotations

import pytest

from sftprep.transforms.normalize import normalize_conversation, normalize_text, split_role_markers
from sftprep.transforms.records import Conversation, Message


@pytest.mark.parametrize("raw,clean", [
    ("  hello \n", "hello"),
    ("a\r\nb\rc", "a\nb\nc"),
    ("\ufeffbom", "bom"),
    ("Cafe\u0301", "Café"),
    ("nul\x00 and bell\x07 and c1\x85", "nul and bell and c1"),
    ("tab\tand\nnewline", "tab\tand\nnewline"),
])
def test_normalize_text(raw, clean):
    assert normalize_text(raw) == clean


def test_roles_are_normalized():
    conv = Conversation(tuple(Message(r, "x") for r in ("System", "human", "GPT", "observation",
                                                        "bot")), dialect="sharegpt")
    assert [m.role for m in normalize_conversation(conv).messages] == \
        ["system", "user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("prompt,turns", [
    ("plain prompt", [("user", "plain prompt")]),
    ("<|USER|> Hi\n<|ASSISTANT|>", [("user", "Hi")]),
    ("<|SYSTEM|> Be brief.\n<|USER|> Hi\n<|ASSISTANT|> Hello\n<|USER|> More\n<|ASSISTANT|>",
     [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "More")]),
    ("Context first\n<|USER|> Q\n<|ASSISTANT|>", [("system", "Context first"), ("user", "Q")]),
])
def test_split_role_markers(prompt, turns):
    assert split_role_markers(prompt) == turns


def test_marker_turns_are_untrained_context():
    conv = Conversation((Message("user", "<|USER|> a\n<|ASSISTANT|> b\n<|USER|> c\n<|ASSISTANT|>"),
                         Message("assistant", " d")), dialect="prompt_completion")
    out = normalize_conversation(conv)
    assert [(m.role, m.content, m.trainable) for m in out.messages] == [
        ("user", "a", False), ("assistant", "b", False), ("user", "c", False),
        ("assistant", "d", None)]


def test_markers_in_other_dialects_stay_text():
    conv = Conversation((Message("user", "<|USER|> fake"), Message("assistant", "ok")),
                        dialect="messages")
    assert normalize_conversation(conv).messages[0].content == "<|USER|> fake"


@pytest.mark.parametrize("messages,reason", [
    ([("user", "only a question")], "no_assistant_turn"),
    ([("user", "q"), ("assistant", "   ")], "empty_content"),
    ([("user", "q"), ("system", "late"), ("assistant", "a")], "misplaced_system"),
    ([("wizard", "q"), ("assistant", "a")], "unknown_role"),
    ([("user", "bad \ud800"), ("assistant", "a")], "invalid_utf8"),
])
def test_structural_rejections(messages, reason):
    conv = Conversation(tuple(Message(r, c) for r, c in messages))
    result = normalize_conversation(conv)
    assert isinstance(result, tuple) and result[0] == reason


def test_trailing_non_assistant_turns_are_trimmed():
    conv = Conversation((Message("user", "q"), Message("assistant", "a"), Message("user", "bye")))
    assert [m.role for m in normalize_conversation(conv).messages] == ["user", "assistant"]

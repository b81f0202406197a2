"""Normalization: text, role names, role markers inside prompts, structural validation."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftprep.transforms.formats import parse_record
from sftprep.transforms.normalize import (
    ROLE_ALIASES, NormalizeError, normalize_conversation, normalize_role, normalize_text,
    split_role_markers)
from sftprep.transforms.records import Conversation, Message, Rejection
from tests.conftest import read_records


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


# The fast paths of normalize_text (pure ASCII checked byte-wise, other text scanned once)
# against the plain definition they replace: NFC, controls dropped, surrogates refused.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def plain_normalize_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _SURROGATE.search(text):
        raise NormalizeError("text contains a lone UTF-16 surrogate")
    return _CONTROL.sub("", unicodedata.normalize("NFC", text)).strip()


def outcome(function, text):
    try:
        return function(text)
    except NormalizeError as err:
        return ("NormalizeError", str(err))


AWKWARD = ("a", "Z", " ", "\t", "\n", "\r", "\x00", "\x07", "\x0b", "\x1f", "\x7f", "\x85", "\x9f",
           "\xa0", "é", "e\u0301", "\u0301", "\u212b", "\ufeff", "\u2028", "\ud800", "\udfff",
           "\U0001f600", "ﬁ", "한", "\u1100\u1161")


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(AWKWARD) | st.characters(), max_size=12).map("".join))
def test_normalize_text_is_the_plain_definition(text):
    assert outcome(normalize_text, text) == outcome(plain_normalize_text, text)


def test_normalize_text_is_the_plain_definition_on_the_bundled_data():
    texts = [m.content for name in ("gsm8k_train.jsonl", "alpaca_en_demo.jsonl",
                                    "glaive_toolcall_en_demo.jsonl")
             for raw in read_records(name, 2000)
             for conv in [parse_record(raw, field_map=(("prompt", "question"),
                                                       ("completion", "answer")))]
             if not isinstance(conv, Rejection) for m in conv.messages]
    assert len(texts) > 5000 and any(not t.isascii() for t in texts)
    for text in texts:
        assert normalize_text(text) == plain_normalize_text(text)


def test_nfc_neither_makes_nor_removes_controls_or_surrogates():
    """What checking them before NFC instead of after relies on, for every code point."""
    for code in range(0x110000):
        char = chr(code)
        if _CONTROL.match(char) or _SURROGATE.match(char):
            assert unicodedata.normalize("NFC", char) == char
            continue
        for form in ("NFC", "NFD"):
            assert not _CONTROL.search(unicodedata.normalize(form, char)), hex(code)


@pytest.mark.parametrize("role", ["user", "User", " human ", "GPT", "gpt", "Assistant\n",
                                  "function_response", "wizard", " Wizard ", "", "TOOL"])
def test_normalize_role_is_the_alias_of_the_stripped_lowercase_name(role):
    name = role.strip().lower()
    assert normalize_role(role) == ROLE_ALIASES.get(name, name)

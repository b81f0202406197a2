"""Parse one raw record of any supported dialect into a `Conversation` (roles not yet normalized).

>>> conv = parse_record(RawRecord("a.jsonl", 1, '{"prompt": "Hi", "completion": "Hello"}'))
>>> [(m.role, m.content) for m in conv.messages]
[('user', 'Hi'), ('assistant', 'Hello')]
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from sftprep.transforms import strict_json
from sftprep.transforms.normalize import normalize_role
from sftprep.transforms.records import Conversation, Message, RawRecord, Rejection, ToolCall

FORMATS = ("prompt_completion", "alpaca", "messages", "sharegpt", "preference")


class ParseError(Exception):
    """A data defect found while parsing; turned into a `Rejection` at the edge of this module."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_record(raw: RawRecord, fmt: Optional[str] = None,
                 field_map: Sequence[Tuple[str, str]] = ()) -> Union[Conversation, Rejection]:
    """Decode, rename fields (`--map NEW=OLD`), detect or force the dialect, and parse."""
    if raw.error:
        return Rejection(raw.source, raw.line, raw.error, raw.detail, raw.text)
    try:
        record = _load_object(raw.text)
        for new, old in field_map:
            if old in record and new not in record:
                record[new] = record.pop(old)
        # A record with chosen / rejected is preference data whatever --format says: read as
        # another dialect, its chosen answer would be silently ignored.
        dialect = "preference" if _is_preference(record) else fmt or detect_format(record)
        messages = _PARSERS[dialect](record)
        tools = _tools(record)
        _check_declared_tools(messages, tools)
    except ParseError as err:
        return Rejection(raw.source, raw.line, err.reason, err.detail, raw.text)
    text = json.dumps(tools, ensure_ascii=False, sort_keys=True) if tools else ""
    return Conversation(tuple(messages), tools=text, source=raw.source, line=raw.line,
                        dialect=dialect)


def _is_preference(record: Dict[str, Any]) -> bool:
    return "chosen" in record or "rejected" in record


def detect_format(record: Dict[str, Any]) -> str:
    if _is_preference(record):
        return "preference"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise ParseError("unknown_format", f"no known dialect matches the fields ({keys}); "
                                       "use --format or --map NEW=OLD")


def _reject_constant(name: str) -> Any:
    raise ParseError("invalid_json", f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one that overflows a double is a defect."""
    value = float(text)
    if not math.isfinite(value):
        raise ParseError("invalid_number", f"the number {text[:40]} is not finite as a double")
    return value


# Built once, not per record. `NaN` / `Infinity` are not JSON at all (RFC 8259): invalid_json.
# A numeral such as 1e999 is valid JSON that no double holds (it would be trained as
# "Infinity"): invalid_number. Every JSON text inside a record goes through this decoder.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads(text: str) -> Any:
    """Strict JSON (see _DECODER); ValueError or RecursionError for text that is not JSON.
    Compiled where that gives the same value (strict_json.py)."""
    return strict_json.loads(text, _DECODER.decode)


def _load_object(text: str) -> Dict[str, Any]:
    try:
        value = _loads(text)
    except RecursionError:
        raise ParseError("invalid_json", "nesting too deep") from None
    except ValueError as err:
        raise ParseError("invalid_json", str(err)) from None
    if not isinstance(value, dict):
        raise ParseError("not_an_object", f"a record must be a JSON object, got {type(value).__name__}")
    return value


def _field(record: Dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    if name not in record or record[name] is None:
        if required:
            raise ParseError("missing_field", f"field {name!r} is missing or null")
        return None
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ParseError("wrong_type", f"field {name!r} is {type(value).__name__}, "
                                       f"expected {kind.__name__}")
    return value


def _tools(record: Dict[str, Any]) -> Any:
    """The record's tool definitions as parsed (a list or an object), None when it has none."""
    tools = record.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = _loads(tools)
        except (ValueError, RecursionError):
            raise ParseError("wrong_type", "field 'tools' is a string that is not JSON") from None
    if not isinstance(tools, (list, dict)):
        raise ParseError("wrong_type", f"field 'tools' is {type(tools).__name__}, expected a list")
    return tools or None


REASONING_FIELDS = ("reasoning_content", "reasoning")
REASONING_PARTS = ("reasoning", "thinking")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _content_text(content: Any, where: str, assistant: bool = False) -> Tuple[str, str]:
    """(text, reasoning) of a message content: a string, or a list of text parts
    ({"type": "text", "text"|"value": ...}); an assistant turn's list may also hold reasoning
    parts ({"type": "reasoning"|"thinking", "text"|"value": ...})."""
    if isinstance(content, str):
        return content, ""
    if isinstance(content, list):
        texts, reasoning = [], []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise ParseError("wrong_type", f"{where}: a content part is {type(part).__name__}")
            kind = part.get("type", "text")
            text = part.get("text", part.get("value"))
            if assistant and kind in REASONING_PARTS:
                text = part.get("thinking", text) if text is None else text  # Anthropic's key
                if not isinstance(text, str):
                    raise ParseError("wrong_type", f"{where}: a {kind} part has no string text")
                reasoning.append(text)
                continue
            if kind != "text":
                raise ParseError("unsupported_content", f"{where}: content part of type {kind!r}")
            if not isinstance(text, str):
                raise ParseError("wrong_type", f"{where}: a text part has no string text")
            texts.append(text)
        return "".join(texts), "".join(reasoning)
    if content is None:
        raise ParseError("missing_field", f"{where}: content is null")
    raise ParseError("wrong_type", f"{where}: content is {type(content).__name__}")


def _reasoning_field(item: Dict[str, Any], where: str) -> str:
    """An assistant message's `reasoning_content` / `reasoning` field (OpenAI-compatible APIs)."""
    for name in REASONING_FIELDS:
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ParseError("wrong_type", f"{where}: {name} is {type(value).__name__}, "
                                           "expected a string")
        if value:
            return value
    return ""


def split_think(content: str, reasoning: str = "") -> Tuple[str, str]:
    """(answer, reasoning) of an assistant text that may open with `<think>...</think>`.

    The tag's reasoning follows any reasoning given otherwise (a field, a part); an unclosed
    `<think>` is plain text.

    >>> split_think("<think>\\n2+2=4\\n</think>\\n\\n4")
    ('\\n\\n4', '\\n2+2=4\\n')
    """
    stripped = content.lstrip()
    if stripped.startswith(THINK_OPEN):
        end = stripped.find(THINK_CLOSE, len(THINK_OPEN))
        if end >= 0:
            tagged = stripped[len(THINK_OPEN):end]
            joined = "\n".join(part for part in (reasoning, tagged) if part)
            return stripped[end + len(THINK_CLOSE):], joined
    return content, reasoning


def _assistant_message(content: str, **fields: Any) -> Message:
    answer, reasoning = split_think(content, fields.pop("reasoning", ""))
    return Message("assistant", answer, reasoning=reasoning, **fields)


def _tool_call(name: Any, arguments: Any, where: str) -> ToolCall:
    """One call in the canonical form: arguments as the JSON text of an object, keys in the
    order given, whether they came as an object or as a JSON string of one."""
    if not isinstance(name, str) or not name:
        raise ParseError("invalid_tool_call", f"{where}: tool call without a name")
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise ParseError("invalid_tool_call", f"{where}: arguments are not JSON") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ParseError("invalid_tool_call", f"{where}: arguments of {name!r} are a "
                                              f"{type(arguments).__name__}, not a JSON object")
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False), arguments)


def declared_tool_names(tools: Any) -> Optional[frozenset]:
    """Names a `tools` value declares (OpenAI `{"function": {"name"}}` or plain `{"name"}`
    items), or None when some item names no tool (then calls are not checked).

    >>> sorted(declared_tool_names([{"type": "function", "function": {"name": "f"}}, {"name": "g"}]))
    ['f', 'g']
    """
    names = set()
    for item in tools if isinstance(tools, list) else [tools]:
        function = item.get("function") if isinstance(item, dict) else None
        described = function if isinstance(function, dict) else item
        name = described.get("name") if isinstance(described, dict) else None
        if not isinstance(name, str):
            return None
        names.add(name)
    return frozenset(names)


def _check_declared_tools(messages: Sequence[Message], tools: Any) -> None:
    """A record that declares its tools (as parsed) calls only those (else `undeclared_tool`)."""
    if not tools or not any(m.tool_calls for m in messages):
        return
    declared = declared_tool_names(tools)
    if declared is None:
        return
    for index, message in enumerate(messages):
        for call in message.tool_calls:
            if call.name not in declared:
                listed = ", ".join(sorted(declared)[:10])
                raise ParseError("undeclared_tool",
                                 f"message {index} calls {call.name[:100]!r}, which the "
                                 f"record's tools do not declare ({listed})")


def _weight(item: Dict[str, Any]) -> Optional[bool]:
    weight = item.get("loss_weight", item.get("weight"))
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ParseError("wrong_type", f"loss_weight is {type(weight).__name__}, expected a number")
    return weight > 0


def _system(record: Dict[str, Any]) -> List[Message]:
    """The record's `system` field as a system turn, [] when it has none."""
    system = _field(record, "system", str, required=False)
    return [Message("system", system)] if system else []


def _parse_prompt_completion(record: Dict[str, Any]) -> List[Message]:
    return [*_system(record), Message("user", _field(record, "prompt", str)),
            _assistant_message(_field(record, "completion", str))]


def _parse_alpaca(record: Dict[str, Any]) -> List[Message]:
    messages = _system(record)
    for index, pair in enumerate(_field(record, "history", list, required=False) or []):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise ParseError("wrong_type", f"history[{index}] is not a [prompt, response] pair")
        messages.extend([Message("user", pair[0]), _assistant_message(pair[1])])
    instruction = _field(record, "instruction", str)
    extra = _field(record, "input", str, required=False)
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages.append(Message("user", prompt))
    messages.append(_assistant_message(_field(record, "output", str)))
    return messages


def _parse_messages(record: Dict[str, Any]) -> List[Message]:
    return _parse_turns(_field(record, "messages", list), "messages")


def _parse_sharegpt(record: Dict[str, Any]) -> List[Message]:
    turns = _parse_turns(_field(record, "conversations", list), "conversations")
    return _system(record) + turns


def _parse_turns(items: List[Any], field: str) -> List[Message]:
    """Turns of the messages and sharegpt dialects; either key style (role/content, from/value)."""
    messages: List[Message] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            raise ParseError("wrong_type", f"{where} is {type(item).__name__}, expected an object")
        role = item.get("role", item.get("from"))
        if not isinstance(role, str):
            raise ParseError("missing_field", f"{where} has no role")
        content_value = item.get("content", item.get("value"))
        calls = tuple(_parse_openai_tool_calls(item.get("tool_calls"), where))
        assistant = normalize_role(role) == "assistant"
        reasoning = _reasoning_field(item, where) if assistant else ""
        if role.strip().lower() == "function_call":
            calls = (_parse_sharegpt_call(content_value, where),)
            role, content = "assistant", ""
        elif content_value is None and (calls or reasoning):
            content = ""
        else:
            content, parts = _content_text(content_value, where, assistant)
            reasoning = "\n".join(r for r in (reasoning, parts) if r)
        if assistant:
            content, reasoning = split_think(content, reasoning)
        message = Message(role, content, calls, _weight(item), reasoning)
        previous = messages[-1] if messages else None
        if calls and not content and not reasoning and previous is not None \
                and previous.role == "assistant" and previous.trainable == message.trainable:
            # A function_call turn right after the assistant's text is one assistant turn.
            messages[-1] = dataclasses.replace(previous, tool_calls=previous.tool_calls + calls)
            continue
        messages.append(message)
    return messages


def _parse_openai_tool_calls(calls: Any, where: str) -> List[ToolCall]:
    if calls in (None, []):
        return []
    if not isinstance(calls, list):
        raise ParseError("invalid_tool_call", f"{where}: tool_calls is not a list")
    parsed = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ParseError("invalid_tool_call", f"{where}: malformed tool call")
        parsed.append(_tool_call(function.get("name"), function.get("arguments"), where))
    return parsed


def _parse_sharegpt_call(value: Any, where: str) -> ToolCall:
    if isinstance(value, str):
        try:
            value = _loads(value)
        except (ValueError, RecursionError):
            raise ParseError("invalid_tool_call", f"{where}: function_call value is not JSON") from None
    if not isinstance(value, dict):
        raise ParseError("invalid_tool_call", f"{where}: function_call value is not an object")
    return _tool_call(value.get("name"), value.get("arguments"), where)


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ")


def _parse_preference(record: Dict[str, Any]) -> List[Message]:
    """Preference data, trained on the chosen answer; `rejected` is never read.

    - TRL: `prompt` (a string or a list of messages) with `chosen` (a string or messages);
    - LLaMA-Factory: `conversations` (or `messages`) with `chosen` (one turn or a list);
    - Anthropic HH: `chosen` alone is the whole dialogue as text ("\n\nHuman: ..."
      "\n\nAssistant: ...").
    """
    chosen = record.get("chosen")
    if chosen is None:
        raise ParseError("missing_field", "field 'chosen' is missing or null (a preference "
                                          "record trains on its chosen answer)")
    if not isinstance(chosen, (str, list, dict)) or isinstance(chosen, bool):
        raise ParseError("wrong_type", f"field 'chosen' is {type(chosen).__name__}, expected "
                                       "a string, a message or a list of messages")
    prompt_field = next((f for f in ("conversations", "messages", "prompt") if f in record), None)
    if prompt_field is None:
        if not isinstance(chosen, str):
            raise ParseError("wrong_type", "field 'chosen' without a prompt must be an Anthropic "
                                           "HH dialogue text")
        return _parse_hh(chosen)
    prompt = record[prompt_field]
    if isinstance(prompt, str):
        messages = [Message("user", prompt)]
    elif isinstance(prompt, list):
        messages = _parse_turns(prompt, prompt_field)
    else:
        raise ParseError("wrong_type", f"field {prompt_field!r} is {type(prompt).__name__}, "
                                       "expected a string or a list of messages")
    messages = _system(record) + messages
    if isinstance(chosen, str):
        messages.append(_assistant_message(chosen))
    else:
        messages.extend(_parse_turns(chosen if isinstance(chosen, list) else [chosen], "chosen"))
    return messages


def _parse_hh(text: str) -> List[Message]:
    marks = list(_HH_TURN.finditer(text))
    if not marks or marks[0].start() != 0 and text[:marks[0].start()].strip():
        raise ParseError("unknown_format", "field 'chosen' is not an Anthropic HH dialogue "
                                           "(\n\nHuman: ... \n\nAssistant: ...)")
    messages = []
    for mark, after in zip(marks, marks[1:] + [None]):
        content = text[mark.end():after.start() if after else len(text)]
        messages.append(Message("user", content) if mark.group(1) == "Human"
                        else _assistant_message(content))
    return messages


_PARSERS = {
    "prompt_completion": _parse_prompt_completion,
    "alpaca": _parse_alpaca,
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
    "preference": _parse_preference,
}

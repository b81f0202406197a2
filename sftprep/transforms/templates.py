"""Render a conversation to text, remembering where each turn, its content and its trained part lie.

Built-in templates (`separator`, `markers`, `chatml`) are written in Python so every span is
exact. Jinja templates (the tokenizer's own chat template, or a user file) run in Jinja's
immutable sandbox; `{% generation %}...{% endgeneration %}` marks what is trained.

>>> spec = TemplateSpec("chatml", bos="", eos="</s>")
>>> conv = Conversation((Message("user", "Hi"), Message("assistant", "Hello")))
>>> r = render(conv, spec)
>>> r.text
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n'
>>> [r.text[s:e] for s, e in r.trained_spans("all_assistant")]
['Hello<|im_end|>']
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from sftprep.transforms.records import Conversation, Message, ToolCall

BUILTIN_TEMPLATES = ("separator", "markers", "chatml")
TRAIN_ON = ("all_assistant", "last_assistant", "all")

MARKER_TOKENS = {"system": "<|SYSTEM|>", "user": "<|USER|>", "assistant": "<|ASSISTANT|>",
                 "tool": "<|TOOL|>"}
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
DEFAULT_SEP = "<|SEP|>"

# Marks the output of a {% generation %} block while rendering; normalized content can never
# contain NUL, so the markers cannot be forged by data.
_GEN_OPEN, _GEN_CLOSE = "\x00<gen>\x00", "\x00</gen>\x00"


class TemplateError(ValueError):
    """A conversation this template cannot render (a data defect: the record is rejected)."""


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
    """Everything rendering needs, resolved once at launch from the tokenizer and --template."""

    name: str  # separator | markers | chatml | jinja
    bos: str = ""
    eos: str = ""
    sep: str = DEFAULT_SEP
    source: str = ""  # Jinja text for name == "jinja"
    origin: str = ""  # where the Jinja text came from: "tokenizer" or a file path

    def special_tokens(self) -> Tuple[str, ...]:
        """Control tokens this template writes that the tokenizer must know as special tokens."""
        if self.name == "markers":
            return tuple(MARKER_TOKENS.values())
        if self.name == "chatml":
            return (CHATML_START, CHATML_END)
        if self.name == "separator":
            return (self.sep,)
        return ()

    def fingerprint(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class RenderedTurn:
    """Character spans of one message in the rendered text; -1 where unknown or not applicable."""

    role: str
    start: int  # the whole block, framing included
    end: int
    content_start: int
    content_end: int
    train_start: int = -1  # the assistant part a trained span covers (content + closing token)
    train_end: int = -1
    trainable: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class Rendered:
    text: str
    turns: Tuple[RenderedTurn, ...]

    def trained_spans(self, train_on: str) -> List[Tuple[int, int]]:
        """The character spans whose tokens get labels, for a --train-on policy."""
        if train_on == "all":
            return [(0, len(self.text))]
        assistant = [t for t in self.turns if t.role == "assistant" and t.train_start >= 0]
        if train_on == "last_assistant":
            assistant = assistant[-1:]
        return [(t.train_start, t.train_end) for t in assistant if t.trainable is not False]

    def content_spans(self) -> List[Tuple[int, int]]:
        return [(t.content_start, t.content_end) for t in self.turns if t.content_start >= 0]


def render(conv: Conversation, spec: TemplateSpec) -> Rendered:
    """Render with the named template; raise TemplateError for a conversation it cannot take."""
    if spec.name == "jinja":
        return _render_jinja(conv, spec)
    return _BUILTIN[spec.name](conv, spec)


def assistant_text(message: Message) -> str:
    """An assistant turn's text with its tool calls, in the Hermes/Qwen `<tool_call>` form,
    after its reasoning as `<think>\\n...\\n</think>\\n\\n` when it has some (all trained)."""
    calls = "\n".join(f"<tool_call>\n{call.as_json()}\n</tool_call>" for call in message.tool_calls)
    answer = "\n".join(part for part in (message.content, calls) if part)
    if message.reasoning:
        return f"<think>\n{message.reasoning}\n</think>\n\n{answer}"
    return answer


def tools_text(tools: str) -> str:
    """Tool definitions as the built-in templates put them into the system turn."""
    if not tools:
        return ""
    parsed = json.loads(tools)
    items = parsed if isinstance(parsed, list) else [parsed]
    lines = "\n".join(json.dumps(item, ensure_ascii=False, sort_keys=True) for item in items)
    return ("You can call the following tools. To call one, answer with "
            "<tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call>.\n"
            f"<tools>\n{lines}\n</tools>")


class _Builder:
    """Appends text pieces and records the spans of each turn as it goes."""

    def __init__(self, prefix: str = "") -> None:
        self.parts: List[str] = [prefix]
        self.length = len(prefix)
        self.turns: List[RenderedTurn] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def turn(self, message: Message, header: str, content: str, footer: str,
             train_header_tail: int = 0) -> None:
        """Add one message; an assistant turn trains its content and footer, plus the last
        `train_header_tail` characters of its header."""
        start = self.length
        header_end = start + len(header)
        content_end = header_end + len(content)
        end = content_end + len(footer)
        self.parts += (header, content, footer)
        self.length = end
        if message.role == "assistant":
            self.turns.append(RenderedTurn(message.role, start, end, header_end, content_end,
                                           header_end - train_header_tail, end, message.trainable))
        else:
            self.turns.append(RenderedTurn(message.role, start, end, header_end, content_end,
                                           -1, -1, message.trainable))

    def result(self) -> Rendered:
        return Rendered("".join(self.parts), tuple(self.turns))


def _with_tools(conv: Conversation) -> Tuple[Message, ...]:
    """Fold tool definitions into the system turn (creating one if needed)."""
    if not conv.tools:
        return conv.messages
    block = tools_text(conv.tools)
    messages = list(conv.messages)
    if messages and messages[0].role == "system":
        messages[0] = dataclasses.replace(messages[0], content=f"{messages[0].content}\n\n{block}")
    else:
        messages.insert(0, Message("system", block))
    return tuple(messages)


def _message_text(message: Message) -> str:
    return assistant_text(message) if message.role == "assistant" else message.content


def _render_markers(conv: Conversation, spec: TemplateSpec) -> Rendered:
    """`<|ROLE|> text` lines; each assistant turn closes with EOS and trains from after its marker."""
    builder = _Builder(spec.bos)
    for index, message in enumerate(_with_tools(conv)):
        if index:
            builder.add("\n")
        closing = spec.eos if message.role == "assistant" else ""
        # The space after `<|ASSISTANT|>` is trained with the text: byte-level tokenizers glue
        # it to the first word.
        builder.turn(message, MARKER_TOKENS[message.role] + " ", _message_text(message), closing,
                     train_header_tail=1)
    return builder.result()


def _render_chatml(conv: Conversation, spec: TemplateSpec) -> Rendered:
    builder = _Builder(spec.bos)
    for message in _with_tools(conv):
        builder.turn(message, f"{CHATML_START}{message.role}\n", _message_text(message),
                     CHATML_END)
        builder.add("\n")
    return builder.result()


def _render_separator(conv: Conversation, spec: TemplateSpec) -> Rendered:
    """`{prompt}{SEP}{completion}{EOS}`: single-turn only; a system turn is prepended to the prompt."""
    messages = _with_tools(conv)
    system = messages[0].content if messages[0].role == "system" else ""
    turns = messages[1:] if system else messages
    if len(turns) != 2 or turns[0].role != "user" or turns[1].role != "assistant":
        raise TemplateError(
            f"the separator template takes one user turn and one assistant turn, got "
            f"{'/'.join(m.role for m in turns)}; use --template markers or chatml for dialogues")
    builder = _Builder(spec.bos)
    prompt = Message("user", f"{system}\n\n{turns[0].content}" if system else turns[0].content)
    builder.turn(prompt, "", prompt.content, "")
    builder.turn(turns[1], spec.sep, assistant_text(turns[1]), spec.eos)
    return builder.result()


_BUILTIN: Dict[str, Callable[[Conversation, TemplateSpec], Rendered]] = {
    "separator": _render_separator,
    "markers": _render_markers,
    "chatml": _render_chatml,
}


# ---------------------------------------------------------------------------------------------
# Jinja templates


@functools.lru_cache(maxsize=8)
def _compile_jinja(source: str):
    """Compile once per process. Sandboxed: no attribute access to Python internals, no I/O."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationExtension(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return f"{_GEN_OPEN}{caller()}{_GEN_CLOSE}"

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationExtension, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def check_jinja(source: str) -> None:
    """Compile a template at launch so a syntax error is one clear message, not N rejections."""
    _compile_jinja(source)


def has_generation_blocks(source: str) -> bool:
    return re.search(r"{%-?\s*generation\s*-?%}", source) is not None


def _jinja_messages(messages: Sequence[Message]) -> List[dict]:
    out = []
    for message in messages:
        item: dict = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [_openai_call(call) for call in message.tool_calls]
        out.append(item)
    return out


def _openai_call(call: ToolCall) -> dict:
    return {"type": "function",
            "function": {"name": call.name, "arguments": json.loads(call.arguments)}}


def _render_jinja(conv: Conversation, spec: TemplateSpec) -> Rendered:
    import jinja2

    template = _compile_jinja(spec.source)
    tools = json.loads(conv.tools) if conv.tools else None
    try:
        marked = template.render(messages=_jinja_messages(conv.messages), tools=tools,
                                 bos_token=spec.bos, eos_token=spec.eos,
                                 add_generation_prompt=False)
    except jinja2.exceptions.TemplateError as err:
        raise TemplateError(f"template error: {err}") from None
    text, generation = _strip_generation_marks(marked)
    turns = _locate_turns(text, conv.messages)
    if has_generation_blocks(spec.source):
        turns = _assign_generation(turns, generation)
    else:
        turns = _train_content_and_closing(text, turns, spec.eos)
    return Rendered(text, tuple(turns))


def _strip_generation_marks(marked: str) -> Tuple[str, List[Tuple[int, int]]]:
    pieces: List[str] = []
    spans: List[Tuple[int, int]] = []
    length, position = 0, 0
    while True:
        start = marked.find(_GEN_OPEN, position)
        if start < 0:
            pieces.append(marked[position:])
            break
        end = marked.find(_GEN_CLOSE, start)
        if end < 0:
            raise TemplateError("unbalanced {% generation %} block")
        before, inner = marked[position:start], marked[start + len(_GEN_OPEN):end]
        if _GEN_OPEN in inner:
            raise TemplateError("nested {% generation %} blocks")
        pieces.extend((before, inner))
        length += len(before)
        spans.append((length, length + len(inner)))
        length += len(inner)
        position = end + len(_GEN_CLOSE)
    return "".join(pieces), spans


def _locate_turns(text: str, messages: Sequence[Message]) -> List[RenderedTurn]:
    """Find each message's content in order; a template that rewrites content leaves it -1."""
    turns, position = [], 0
    for message in messages:
        start = text.find(message.content, position) if message.content else -1
        if start >= 0:
            end = start + len(message.content)
            position = end
        else:
            end = -1
        turns.append(RenderedTurn(message.role, start, end, start, end, trainable=message.trainable))
    return turns


def _assign_generation(turns: List[RenderedTurn],
                       generation: List[Tuple[int, int]]) -> List[RenderedTurn]:
    """Give the i-th generation block to the i-th assistant turn."""
    assistant = [i for i, t in enumerate(turns) if t.role == "assistant"]
    if len(generation) != len(assistant):
        raise TemplateError(f"the template marked {len(generation)} generation blocks for "
                            f"{len(assistant)} assistant turns")
    for index, (start, end) in zip(assistant, generation):
        turns[index] = dataclasses.replace(turns[index], train_start=start, train_end=end)
    return turns


def _train_content_and_closing(text: str, turns: List[RenderedTurn], eos: str) -> List[RenderedTurn]:
    """Without generation blocks: train each assistant content plus an EOS written right after it."""
    out = []
    for turn in turns:
        if turn.role == "assistant" and turn.content_start >= 0:
            end = turn.content_end
            if eos and text.startswith(eos, end):
                end += len(eos)
            turn = dataclasses.replace(turn, train_start=turn.content_start, train_end=end)
        out.append(turn)
    return out


def resolve_template(name_or_path: str, *, bos: str, eos: str, sep: Optional[str],
                     tokenizer_chat_template: Optional[str],
                     read_file: Callable[[str], str]) -> TemplateSpec:
    """Turn --template into a TemplateSpec, or raise ValueError with a message a user can act on."""
    if name_or_path in BUILTIN_TEMPLATES:
        return TemplateSpec(name_or_path, bos=bos, eos=eos, sep=sep or DEFAULT_SEP)
    if name_or_path == "tokenizer":
        if not tokenizer_chat_template:
            raise ValueError("--template tokenizer: this tokenizer has no chat_template; use "
                             "--template separator|markers|chatml or a Jinja file")
        source, origin = tokenizer_chat_template, "tokenizer"
    else:
        try:
            source, origin = read_file(name_or_path), name_or_path
        except OSError:
            raise ValueError(f"unknown --template {name_or_path!r}: not one of "
                             f"{', '.join(BUILTIN_TEMPLATES + ('tokenizer',))} "
                             "and not a readable Jinja file") from None
    import jinja2
    try:
        check_jinja(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"--template {name_or_path}: Jinja syntax error line {err.lineno}: "
                         f"{err.message}") from None
    return TemplateSpec("jinja", bos=bos, eos=eos, source=source, origin=origin)


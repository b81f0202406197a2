"""Render a conversation to text, remembering where each turn, its content and its trained part lie.

Built-in templates (`separator`, `markers`, `chatml`) are written in Python so every span is
exact. Jinja templates (the tokenizer's own chat template, or a user file) render as
transformers' `apply_chat_template` renders them (`jinja_env`); what is trained there is what
the model generates: `{% generation %}` blocks where the template has them, else the text
after each turn's generation prompt up to and including its terminator (see `_render_jinja`).

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
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from sftprep.transforms.jinja_env import (
    DEFAULT_TEMPLATE_DATE, RENDER_MAX_CHARS, RENDER_SECONDS, Budget, RenderError, RenderLimit,
    compile_template, run_template)
from sftprep.transforms.records import Conversation, Message, ToolCall

BUILTIN_TEMPLATES = ("separator", "markers", "chatml")
TRAIN_ON = ("all_assistant", "last_assistant", "all")
# What to do with a record whose earlier assistant turns the template renders differently from
# what the model generated at that turn (Qwen3, DeepSeek-R1: reasoning dropped from history).
REWRITTEN_TURNS = ("last", "split", "as_rendered")
DEFAULT_REWRITTEN_TURNS = "last"

MARKER_TOKENS = {"system": "<|SYSTEM|>", "user": "<|USER|>", "assistant": "<|ASSISTANT|>",
                 "tool": "<|TOOL|>"}
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
DEFAULT_SEP = "<|SEP|>"


class TemplateError(ValueError):
    """A conversation this template cannot render (a data defect: the record is rejected)."""


class TemplateLimitError(TemplateError):
    """Rendering this conversation went over the per-record time or size budget."""


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
    """Everything rendering needs, resolved once at launch from the tokenizer and --template."""

    name: str  # separator | markers | chatml | jinja
    bos: str = ""
    eos: str = ""
    sep: str = DEFAULT_SEP
    source: str = ""  # Jinja text for name == "jinja"
    origin: str = ""  # where the Jinja text came from: "tokenizer" or a file path
    # Jinja only (see resolve_template):
    variables: Tuple[Tuple[str, str], ...] = ()  # --template-kwargs, values as JSON text
    date: str = DEFAULT_TEMPLATE_DATE  # what strftime_now formats
    stop: Tuple[str, ...] = ()  # strings that end a generated turn
    history_stop: Tuple[str, ...] = ()  # strings that end a turn in history (as_rendered)
    control_tokens: Tuple[str, ...] = ()  # the tokenizer's special tokens: literal when in data
    rewritten_turns: str = DEFAULT_REWRITTEN_TURNS
    render_seconds: float = RENDER_SECONDS
    render_max_chars: int = RENDER_MAX_CHARS

    def special_tokens(self) -> Tuple[str, ...]:
        """Control tokens this template writes that the tokenizer must know as special tokens."""
        return {"markers": tuple(MARKER_TOKENS.values()), "chatml": (CHATML_START, CHATML_END),
                "separator": (self.sep,)}.get(self.name, ())

    def fingerprint(self) -> str:
        """A hash of what decides the rendering (built-ins: the same fields as before Jinja
        options existed, so their fingerprints did not change)."""
        fields = dataclasses.asdict(self)
        if self.name != "jinja":
            fields = {k: fields[k] for k in ("name", "bos", "eos", "sep", "source", "origin")}
        payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
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
    """A rendered text with its turns. `literal`: for Jinja templates, the exact spans of control
    tokens that come from the data (tokenized as text); None for the built-ins, whose content
    spans are exact. `rewritten`: the template renders an earlier assistant turn differently from
    what the model generated at that turn (--rewritten-turns was applied)."""

    text: str
    turns: Tuple[RenderedTurn, ...]
    literal: Optional[Tuple[Tuple[int, int], ...]] = None
    rewritten: bool = False

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

    def literal_spans(self) -> List[Tuple[int, int]]:
        """Spans whose text is data: special tokens spelled there are tokenized as text."""
        return list(self.literal) if self.literal is not None else self.content_spans()


def render(conv: Conversation, spec: TemplateSpec) -> Rendered:
    """Render with the named template; raise TemplateError for a conversation it cannot take.

    Under --rewritten-turns split a Jinja template may make several examples of one
    conversation (`render_examples`); this returns the last one.
    """
    if spec.name == "jinja":
        return _render_jinja(conv, spec)[-1][1]
    return _BUILTIN[spec.name](conv, spec)


def render_examples(conv: Conversation, spec: TemplateSpec,
                    train_on: str = "all_assistant") -> List[Tuple[Conversation, Rendered]]:
    """The examples one conversation becomes, each with the conversation it renders: one, or
    under --rewritten-turns split one per trained assistant turn of a rewritten record."""
    if spec.name != "jinja":
        return [(conv, _BUILTIN[spec.name](conv, spec))]
    if train_on != "all_assistant" and spec.rewritten_turns != "last":
        # Only the final turn (last_assistant) or every token (all) is trained: nothing to split.
        spec = dataclasses.replace(spec, rewritten_turns="last" if train_on == "last_assistant"
                                   else "as_rendered")
    return _render_jinja(conv, spec)


def assistant_text(message: Message) -> str:
    """An assistant turn's text with its tool calls, in the Hermes/Qwen `<tool_call>` form,
    after its reasoning as `<think>\\n...\\n</think>\\n\\n` when it has some (all trained)."""
    calls = "\n".join(f"<tool_call>\n{call.as_json()}\n</tool_call>" for call in message.tool_calls)
    answer = "\n".join(part for part in (message.content, calls) if part)
    if message.reasoning:
        return f"<think>\n{message.reasoning}\n</think>\n\n{answer}"
    return answer


@functools.lru_cache(maxsize=256)
def tools_text(tools: str) -> str:
    """Tool definitions as the built-in templates put them into the system turn (records of one
    dataset often share their tools: each text is parsed once)."""
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
        train = (header_end - train_header_tail, end) if message.role == "assistant" else (-1, -1)
        self.turns.append(RenderedTurn(message.role, start, end, header_end, content_end, *train,
                                       message.trainable))

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
def has_generation_blocks(source: str) -> bool:
    return re.search(r"{%-?\s*generation\s*-?%}", source) is not None


def _jinja_messages(messages: Sequence[Message]) -> List[dict]:
    """Messages as `apply_chat_template` passes them; reasoning under `reasoning_content` (and
    `thinking`, which gpt-oss reads), as transformers aliases it."""
    out = []
    for message in messages:
        item: dict = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [_openai_call(call) for call in message.tool_calls]
        if message.role == "assistant" and message.reasoning:
            item = {"thinking": message.reasoning, **item, "reasoning_content": message.reasoning}
        out.append(item)
    return out


def _openai_call(call: ToolCall) -> dict:
    return {"type": "function",
            "function": {"name": call.name, "arguments": call.arguments_value()}}


class _Renderer:
    """Renders prefixes of one conversation with one budget for all of them."""

    def __init__(self, spec: TemplateSpec, messages: List[dict], tools: Any):
        self.spec, self.messages, self.tools = spec, messages, tools
        self.budget = Budget(spec.render_seconds, spec.render_max_chars)
        # The template's own variables (--template-kwargs values are JSON text), parsed once.
        self.variables: Dict[str, Any] = {
            key: value for key, value in (("bos_token", spec.bos), ("eos_token", spec.eos)) if value}
        self.variables.update((key, json.loads(value)) for key, value in spec.variables)

    def __call__(self, count: int, generation_prompt: bool) -> Tuple[str, List[Tuple[int, int]]]:
        variables = dict(self.variables, messages=self.messages[:count], tools=self.tools,
                         documents=None, add_generation_prompt=generation_prompt)
        return run_template(self.spec.source, variables, self.budget, self.spec.date)

    def with_answer(self, index: int, answer: str) -> str:
        """The conversation up to message `index`, with that message's content replaced."""
        saved = self.messages
        self.messages = saved[:index] + [{**saved[index], "content": answer}]
        try:
            return self(index + 1, False)[0]
        finally:
            self.messages = saved


@dataclasses.dataclass(frozen=True)
class _Generated:
    """One assistant turn as the model generated it: `alone` is the conversation rendered up to
    and including the turn; the model, given `alone[:start]`, wrote `alone[start:end]`."""

    index: int  # of the message
    alone: str
    start: int
    end: int
    exact: bool  # the full rendering holds the same text up to `end`
    extra: int = 0  # characters after `end` in the full text the model also generates (a stop)


def _render_jinja(conv: Conversation, spec: TemplateSpec) -> List[Tuple[Conversation, Rendered]]:
    try:
        return _render_jinja_checked(conv, spec)
    except RenderLimit as err:
        raise TemplateLimitError(str(err)) from None
    except RenderError as err:
        raise TemplateError(str(err)) from None


def _render_jinja_checked(conv: Conversation, spec: TemplateSpec
                          ) -> List[Tuple[Conversation, Rendered]]:
    messages = _jinja_messages(conv.messages)
    tools = json.loads(conv.tools) if conv.tools else None
    run = _Renderer(spec, messages, tools)
    full, blocks = run(len(messages), False)
    literal = _LiteralFinder(conv, run)
    if has_generation_blocks(spec.source):
        spans = _assign_generation(conv.messages, blocks)
    else:
        generated = [_generated(index, run, full, len(messages), spec.stop, spec.history_stop)
                     for index, message in enumerate(conv.messages) if message.role == "assistant"]
        if not all(g.exact for g in generated):
            return _rewritten(conv, spec, full, generated, literal)
        spans = {g.index: (g.start, g.end + g.extra) for g in generated}
    return [(conv, Rendered(full, _turns(full, conv.messages, spans),
                            literal(full, len(messages))))]


def _generated(index: int, run: _Renderer, full: str, count: int,
               stop: Sequence[str], history_stop: Sequence[str]) -> _Generated:
    """Where assistant message `index` begins and ends as the model generates it.

    The generation prompt is the conversation before the turn rendered with
    `add_generation_prompt`; the turn is that conversation rendered up to and including it; what
    follows the prompt is generated, up to and including the first stop string that only
    whitespace and stop strings follow (Phi-3 writes `<|end|>\n` then EOS at the end of the
    conversation: the model stops at `<|end|>`), else up to its trailing whitespace. A template
    whose turn does not start with its own generation prompt (DeepSeek's `<think>\\n` prefill)
    is trained from where the two part. When the generated text does not end with a stop string
    and the full text puts one right after it (GLM-4: the next turn's `<|user|>`), that stop
    string is generated too.
    """
    prompt, _ = run(index, True)
    alone = full if index + 1 == count else run(index + 1, False)[0]
    if alone.startswith(prompt):
        start = len(prompt)
    else:
        # Where prompt and turn part; rendered with two answers that differ in their first
        # character, so an answer that starts like the prompt's tail cannot move the point.
        start = min(len(os.path.commonprefix([prompt, run.with_answer(index, answer)]))
                    for answer in ("A", "B"))
    end = _generated_end(alone, start, stop)
    exact = full.startswith(alone[:end])
    extra = 0
    if exact and not any(alone.endswith(s, start, end) for s in stop):
        after = len(full) - len(full[end:].lstrip())
        following = next((s for s in (*stop, *history_stop) if full.startswith(s, after)), None)
        if following is not None:
            extra = after + len(following) - end
    return _Generated(index, alone, start, end, exact, extra)


def _generated_end(alone: str, start: int, stop: Sequence[str]) -> int:
    """Where the generated text that starts at `start` ends (see `_generated`)."""
    end = len(alone.rstrip())
    if not stop:
        return max(end, start)
    pattern, tail = _stop_patterns(tuple(stop))
    for match in pattern.finditer(alone, start, end):
        if tail.fullmatch(alone, match.end(), end):
            return match.end()
    return max(end, start)


def _rewritten(conv: Conversation, spec: TemplateSpec, full: str, generated: List[_Generated],
               literal: "_LiteralFinder") -> List[Tuple[Conversation, Rendered]]:
    """Apply --rewritten-turns to a record whose history differs from what the model generated.

    last: only the final assistant turn is trained, in the full text when it is exact there, else
    in its own rendering; split: one example per trained assistant turn, each rendered as the
    model saw it; as_rendered: the full text, each turn trained from its generation prompt to
    the first stop string (a turn with none is not trained).
    """
    count = len(conv.messages)
    if spec.rewritten_turns == "as_rendered":
        spans = {}
        for g in generated:
            if g.exact:
                spans[g.index] = (g.start, g.end + g.extra)
                continue
            start = min(g.start, len(os.path.commonprefix([full, g.alone])))
            found = [(full.find(s, start), s) for s in (*spec.stop, *spec.history_stop)]
            found = [(at + len(s), at) for at, s in found if at >= 0]
            if found:
                spans[g.index] = (start, min(found)[0])
        return [(conv, Rendered(full, _turns(full, conv.messages, spans), literal(full, count),
                                rewritten=True))]
    chosen = generated[-1:] if spec.rewritten_turns == "last" else \
        [g for g in generated if conv.messages[g.index].trainable is not False] or generated[-1:]
    examples = []
    for g in chosen:
        if g is generated[-1] and g.exact:
            text, part, upto = full, conv, count
            span = (g.start, g.end + g.extra)
        else:
            upto = g.index + 1
            text, part = g.alone, dataclasses.replace(conv, messages=conv.messages[:upto])
            span = (g.start, g.end)
        turns = _turns(text, part.messages, {g.index: span}, untrained=True)
        examples.append((part, Rendered(text, turns, literal(text, upto), rewritten=True)))
    return examples


def _assign_generation(messages: Sequence[Message], generation: List[Tuple[int, int]]
                       ) -> Dict[int, Tuple[int, int]]:
    """Give the i-th generation block to the i-th assistant turn. Blocks after the last one of
    a conversation that ends with an assistant turn extend that turn (Phi-3's training variant
    marks the closing EOS as generated, in a block of its own)."""
    assistant = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if assistant and len(generation) > len(assistant) and assistant[-1] == len(messages) - 1:
        last = len(assistant) - 1
        generation = generation[:last] + [(generation[last][0], generation[-1][1])]
    if len(generation) != len(assistant):
        raise TemplateError(f"the template marked {len(generation)} generation blocks for "
                            f"{len(assistant)} assistant turns")
    return dict(zip(assistant, generation))


def _turns(text: str, messages: Sequence[Message], trained: Dict[int, Tuple[int, int]],
           untrained: bool = False) -> Tuple[RenderedTurn, ...]:
    """One RenderedTurn per message. Assistant turns in `trained` train that span; with
    `untrained`, the other assistant turns are context.

    Content spans serve truncation only (which prompt tokens may be cut): each message's content
    is looked up in the stretch of text between the trained spans around it. Labels and control
    tokens never come from these lookups.
    """
    edges = sorted(trained.items())
    turns = []
    position = 0
    for index, message in enumerate(messages):
        span = trained.get(index)
        if span is not None:
            low, high = span
        else:
            low = position
            high = next((s for i, (s, _) in edges if i > index), len(text))
        at = text.find(message.content, low, high) if message.content else -1
        content = (at, at + len(message.content)) if at >= 0 else (-1, -1)
        if span is not None:
            turns.append(RenderedTurn(message.role, low, high, *content, low, high,
                                      message.trainable))
            position = high
        else:
            turns.append(RenderedTurn(message.role, low if at >= 0 else -1,
                                      content[1], *content,
                                      trainable=False if untrained and message.role == "assistant"
                                      else message.trainable))
            if at >= 0:
                position = content[1]
    return tuple(turns)


class _LiteralFinder:
    """The spans of control tokens that come from the data, found by rendering twice.

    Only for a record whose strings spell one of the tokenizer's special tokens: each occurrence
    in the data is replaced by as many `#`, the conversation is rendered again, and the
    occurrences in the text that differ between the two renderings are the data's. A template
    that renders the replaced conversation to a different length reacts to the tokens in the data
    itself: the record is rejected.
    """

    def __init__(self, conv: Conversation, run: "_Renderer"):
        self.pattern = _control_pattern(run.spec.control_tokens)
        self.run: Optional[_Renderer] = None
        if self.pattern is not None and any(self.pattern.search(s) for s in _data_strings(conv)):
            messages, tools = _neutralized(conv, run.tools, self.pattern)
            self.run = _Renderer(run.spec, _jinja_messages(messages), tools)
            self.run.budget = run.budget

    def __call__(self, text: str, count: int) -> Optional[Tuple[Tuple[int, int], ...]]:
        if self.run is None:
            return ()
        other, _ = self.run(count, False)
        if len(other) != len(text):
            raise TemplateError("the template treats special tokens written in the data "
                                "differently from other text; the record is refused")
        return tuple((m.start(), m.end()) for m in self.pattern.finditer(text)
                     if other[m.start():m.end()] != m.group())


@functools.lru_cache(maxsize=8)
def _control_pattern(tokens: Tuple[str, ...]) -> Optional["re.Pattern[str]"]:
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


@functools.lru_cache(maxsize=8)
def _stop_patterns(stop: Tuple[str, ...]) -> "Tuple[re.Pattern[str], re.Pattern[str]]":
    """The stop strings' pattern, and one for what may follow the last of them (whitespace and
    more stop strings), compiled once per stop set rather than per turn."""
    pattern = _control_pattern(stop)
    return pattern, re.compile(r"(?:\s|" + pattern.pattern + r")*")


def _data_strings(conv: Conversation) -> Iterator[str]:
    yield conv.tools
    for message in conv.messages:
        yield message.content
        yield message.reasoning
        for call in message.tool_calls:
            yield call.name
            yield call.arguments


def _neutralized(conv: Conversation, tools: Any, pattern: "re.Pattern[str]"
                 ) -> Tuple[Tuple[Message, ...], Any]:
    """The messages and tools (as parsed) with every control token in their strings replaced by
    as many `#`."""

    def clean(text: str) -> str:
        return pattern.sub(lambda m: "#" * len(m.group()), text)

    def clean_call(call: ToolCall) -> ToolCall:
        arguments = _clean_value(call.arguments_value(), clean)
        return ToolCall(clean(call.name), json.dumps(arguments, ensure_ascii=False), arguments)

    return tuple(dataclasses.replace(
        m, content=clean(m.content), reasoning=clean(m.reasoning),
        tool_calls=tuple(clean_call(c) for c in m.tool_calls)) for m in conv.messages), \
        _clean_value(tools, clean)


def _clean_value(value: Any, clean: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k): _clean_value(v, clean) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v, clean) for v in value]
    return value


# The conversation every Jinja template must render at launch.
_PROBE_USER, _PROBE_ANSWER = "What is 2 + 2?", "2 + 2 = 4."
PROBE = Conversation((Message("user", _PROBE_USER), Message("assistant", _PROBE_ANSWER),
                      Message("user", "And 3 + 3?"), Message("assistant", "3 + 3 = 6.")))


def template_terminators(spec: TemplateSpec) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The template's own end-of-turn strings, read off the probe: what it writes after an
    answer (the assistant turn's terminators, split at whitespace: Phi-3's `<|end|>\n<eos>`),
    and what it writes after a user message (the turn terminator history uses, e.g. gpt-oss's
    `<|end|>` where a final answer ends with `<|return|>`)."""
    messages = _jinja_messages(PROBE.messages[:2])
    run = _Renderer(spec, messages, None)
    prompt, _ = run(1, True)
    whole, _ = run(2, False)
    user_only, _ = run(1, False)
    start = len(os.path.commonprefix([prompt, whole]))
    found = []
    for text, piece, begin in ((whole, _PROBE_ANSWER, start), (user_only, _PROBE_USER, 0)):
        at = text.rfind(piece, begin)
        found.append(tuple(dict.fromkeys(text[at + len(piece):].split())) if at >= 0 else ())
    return found[0], found[1]


def resolve_template(name_or_path: str, *, bos: str, eos: str, sep: Optional[str],
                     tokenizer_chat_template: Optional[str],
                     read_file: Callable[[str], str],
                     variables: Sequence[Tuple[str, str]] = (),
                     date: str = DEFAULT_TEMPLATE_DATE, stop: Sequence[str] = (),
                     control_tokens: Sequence[str] = (),
                     rewritten_turns: str = DEFAULT_REWRITTEN_TURNS) -> TemplateSpec:
    """Turn --template into a TemplateSpec, or raise ValueError with a message a user can act on.

    A Jinja template must compile and render a probe conversation (a launch-time error, not one
    rejection per record); its stop strings are `stop` (--stop-tokens, generation_config.json)
    followed by the terminators it writes itself.
    """
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
        except (OSError, UnicodeDecodeError, ValueError):
            raise ValueError(f"unknown --template {name_or_path!r}: not one of "
                             f"{', '.join(BUILTIN_TEMPLATES + ('tokenizer',))} "
                             "and not a readable Jinja file") from None
    import jinja2
    try:  # compiled at launch: a syntax error is one clear message, not N rejections
        compile_template(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"--template {name_or_path}: Jinja syntax error line {err.lineno}: "
                         f"{err.message}") from None
    except Exception as err:  # noqa: BLE001 (any compile failure is the template's)
        raise ValueError(f"--template {name_or_path}: cannot compile: {err}") from None
    spec = TemplateSpec("jinja", bos=bos, eos=eos, source=source, origin=origin,
                        variables=tuple(variables), date=date,
                        control_tokens=tuple(sorted(set(control_tokens))),
                        rewritten_turns=rewritten_turns)
    try:
        own, history = template_terminators(spec)
        stop = tuple(dict.fromkeys([*stop, *own]))
        spec = dataclasses.replace(spec, stop=stop,
                                   history_stop=tuple(s for s in history if s not in stop))
        _render_jinja_checked(PROBE, spec)
    except (RenderError, TemplateError) as err:
        raise ValueError(f"--template {name_or_path} cannot render a probe conversation "
                         f"(user, assistant, user, assistant): {err}") from None
    return spec

"""Run a chat template as transformers' `apply_chat_template` does, in a bounded sandbox.

The environment copies `transformers.utils.chat_template_utils` (5.x): the immutable sandbox with
`trim_blocks` and `lstrip_blocks`, the loop controls, `{% generation %}`, `raise_exception`,
`tojson` with HF's arguments, `strftime_now`, `dict` and a `namespace` that refuses underscore
names. Two things differ on purpose:
- `strftime_now` formats the run's fixed date (`--template-date`), not today's, so a rebuild
  renders the same bytes;
- every call, operator, attribute lookup, filter and output piece checks a per-render budget
  (deadline and output size): a runaway template raises `RenderLimit` instead of hanging or
  exhausting memory.

`{% generation %}` blocks are tracked out of band, like HF's `AssistantTracker`: the block's
output is recorded when the extension returns it, and its position is taken from the output
stream when that very string object comes out of `generate()`. No marker characters go into the
text, so nothing in the data can forge a trained span.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import time
from typing import Any, Dict, List, Optional, Tuple

DEFAULT_TEMPLATE_DATE = "2026-01-01"  # what strftime_now returns without --template-date
RENDER_SECONDS = 10.0  # per record, all its renders together
RENDER_MAX_CHARS = 32 * 1024 * 1024  # per render: output, and any string or list built on the way

Span = Tuple[int, int]


class RenderError(ValueError):
    """The template failed on this conversation (any exception it raised)."""


class RenderLimit(RenderError):
    """The template went over its time or size budget."""


class Budget:
    """A deadline and a size cap shared by the renders of one record."""

    def __init__(self, seconds: float = RENDER_SECONDS, max_chars: int = RENDER_MAX_CHARS):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.max_chars = max_chars

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took more than {self.seconds:g} s")

    def check_size(self, value: Any) -> None:
        if isinstance(value, (str, list, tuple, dict)) and len(value) > self.max_chars:
            raise RenderLimit(f"the template built a value of {len(value):,} items "
                              f"(limit {self.max_chars:,})")


_BUDGET: contextvars.ContextVar[Optional[Budget]] = contextvars.ContextVar("budget", default=None)
_PENDING: contextvars.ContextVar[Optional[List[str]]] = contextvars.ContextVar("pending",
                                                                              default=None)


def _check(value: Any = None) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_time()
        if value is not None:
            budget.check_size(value)


def _refuse_huge_ints(args, kwargs) -> None:
    """Refuse an integer argument above the size cap (`'x'.ljust(10**10)`, `center(10**10)`)."""
    budget = _BUDGET.get()
    if budget is None:
        return
    for value in (*args, *kwargs.values()):
        if type(value) is int and abs(value) > budget.max_chars:
            raise RenderLimit(f"the template asked for a size of {value:,} "
                              f"(limit {budget.max_chars:,})")


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
    """Compile once per process (jinja2 errors propagate: the caller reports them at launch)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])
        intercepted_unops = frozenset(["-", "+"])

        def call_binop(self, context, operator, left, right):
            _check()
            if operator == "*":
                seq, times = (left, right) if isinstance(right, int) else (right, left)
                budget = _BUDGET.get()
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and budget is not None and len(seq) * times > budget.max_chars:
                    raise RenderLimit(f"the template repeats a value {times:,} times "
                                      f"(limit {budget.max_chars:,} items)")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 4096 \
                    and isinstance(left, (int, float)) and abs(left) > 1:
                raise RenderLimit(f"the template computes {left} ** {right}")
            result = super().call_binop(context, operator, left, right)
            _check(result)
            return result

        def call_unop(self, context, operator, arg):
            _check()
            return super().call_unop(context, operator, arg)

        def getattr(self, obj, attribute):
            _check()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _check()
            return super().getitem(obj, argument)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            _check()
            _refuse_huge_ints(args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            _check(result)
            return result

    class GenerationTracker(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

        def _generation(self, caller):
            output = caller()
            pending = _PENDING.get()
            if pending is not None:
                pending.append(output)
            return output

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # HF's override: no HTML escaping, and its keyword arguments.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                    f"but got {name!r}.")

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def _bounded_filter(function):
    """A filter that checks the budget before (huge integer arguments) and after (result size)."""

    @functools.wraps(function)
    def bounded(*args, **kwargs):
        _check()
        _refuse_huge_ints(args[1:], kwargs)
        result = function(*args, **kwargs)
        _check(result)
        return result

    if hasattr(function, "jinja_pass_arg"):
        bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


_DATE: contextvars.ContextVar[str] = contextvars.ContextVar("date", default=DEFAULT_TEMPLATE_DATE)


def _strftime_now(format):
    return datetime.datetime.strptime(_DATE.get(), "%Y-%m-%d").strftime(format)


def check_date(text: str) -> str:
    """A --template-date, checked (ValueError with a one-line message)."""
    try:
        datetime.datetime.strptime(text, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise ValueError(f"--template-date expects YYYY-MM-DD, got {text!r}") from None
    return text


def run_template(source: str, variables: Dict[str, Any], budget: Budget,
                 date: str = DEFAULT_TEMPLATE_DATE) -> Tuple[str, List[Span]]:
    """Render; return the text and the spans of its `{% generation %}` blocks, in order.

    Any exception the template raises becomes `RenderError` (`RenderLimit` for the budget).
    A generation block whose output does not come straight out of the template (inside a macro,
    a `{% set %}` block or another generation block) cannot be located: `RenderError`.
    """
    import jinja2

    template = compile_template(source)
    pending: List[str] = []
    tokens = (_BUDGET.set(budget), _PENDING.set(pending), _DATE.set(date))
    pieces: List[str] = []
    spans: List[Span] = []
    length = 0
    try:
        for piece in template.generate(**variables):
            if pending:
                if len(pending) > 1 or pending[0] is not piece:
                    raise RenderError("a {% generation %} block sftprep cannot locate (inside a "
                                      "macro, a {% set %} block or another generation block)")
                spans.append((length, length + len(piece)))
                pending.clear()
            pieces.append(piece)
            length += len(piece)
            if length > budget.max_chars:
                raise RenderLimit(f"the rendered text passed {budget.max_chars:,} characters")
            budget.check_time()
        if pending:
            raise RenderError("a {% generation %} block sftprep cannot locate (inside a macro, "
                              "a {% set %} block or another generation block)")
    except RenderError:
        raise
    except jinja2.exceptions.TemplateError as err:
        raise RenderError(f"template error: {err}") from None
    except RecursionError:
        raise RenderError("template error: recursion too deep") from None
    except MemoryError:
        raise RenderLimit("the template ran out of memory") from None
    except Exception as err:  # any bug a template can have: the record is rejected, not the run
        raise RenderError(f"template error: {type(err).__name__}: {err}") from None
    finally:
        for var, token in zip((_BUDGET, _PENDING, _DATE), tokens):
            var.reset(token)
    return "".join(pieces), spans

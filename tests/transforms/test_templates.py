"""Templates: exact spans of the built-ins, Jinja generation blocks, the sandbox, resolution."""

from __future__ import annotations

import json

import pytest

from sftprep.transforms.records import Conversation, Message, ToolCall
from sftprep.transforms.templates import (
    TemplateError, TemplateSpec, render, resolve_template)

EOS = "</s>"
CONV = Conversation((Message("system", "Sys"), Message("user", "Hi"), Message("assistant", "Yo"),
                     Message("user", "More"), Message("assistant", "Sure")))


def trained(rendered, train_on="all_assistant"):
    return [rendered.text[s:e] for s, e in rendered.trained_spans(train_on)]


def test_markers_render_and_spans():
    r = render(CONV, TemplateSpec("markers", bos="<s>", eos=EOS))
    assert r.text == ("<s><|SYSTEM|> Sys\n<|USER|> Hi\n<|ASSISTANT|> Yo</s>\n<|USER|> More\n"
                      "<|ASSISTANT|> Sure</s>")
    assert trained(r) == [" Yo</s>", " Sure</s>"]
    assert trained(r, "last_assistant") == [" Sure</s>"]
    assert trained(r, "all") == [r.text]
    assert [r.text[s:e] for s, e in r.content_spans()] == ["Sys", "Hi", "Yo", "More", "Sure"]


def test_chatml_with_tools_and_tool_calls():
    conv = Conversation((Message("user", "Weather?"),
                         Message("assistant", "", (ToolCall("get", '{"city": "Paris"}'),)),
                         Message("tool", '{"t": 20}'), Message("assistant", "20C")),
                        tools=json.dumps([{"name": "get"}]))
    r = render(conv, TemplateSpec("chatml", eos=EOS))
    assert r.text.startswith("<|im_start|>system\nYou can call the following tools.")
    assert '<tools>\n{"name": "get"}\n</tools><|im_end|>\n' in r.text
    assert "<|im_start|>tool\n{\"t\": 20}<|im_end|>\n" in r.text
    assert trained(r) == ['<tool_call>\n{"name": "get", "arguments": {"city": "Paris"}}\n'
                          '</tool_call><|im_end|>', "20C<|im_end|>"]


def test_untrainable_assistant_turns_are_skipped():
    conv = Conversation((Message("user", "a"), Message("assistant", "b", trainable=False),
                         Message("user", "c"), Message("assistant", "d")))
    assert trained(render(conv, TemplateSpec("chatml", eos=EOS))) == ["d<|im_end|>"]


def test_separator_is_single_turn():
    conv = Conversation((Message("system", "S"), Message("user", "P"), Message("assistant", "C")))
    r = render(conv, TemplateSpec("separator", bos="<s>", eos=EOS, sep="<SEP>"))
    assert r.text == "<s>S\n\nP<SEP>C</s>"
    assert trained(r) == ["C</s>"]
    with pytest.raises(TemplateError, match="one user turn and one assistant turn"):
        render(CONV, TemplateSpec("separator", eos=EOS))


GEN_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]"
                "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}"
                "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}")


def test_jinja_generation_blocks_mark_trained_spans():
    r = render(CONV, TemplateSpec("jinja", bos="<s>", eos=EOS, source=GEN_TEMPLATE))
    assert r.text == "<s>[system]Sys\n[user]Hi\n[assistant]Yo</s>\n[user]More\n[assistant]Sure</s>\n"
    assert trained(r) == ["Yo</s>", "Sure</s>"]
    assert "\x00" not in r.text


def test_jinja_without_generation_trains_what_the_model_generates():
    # No generation prompt: the model writes the role header itself, so it is trained.
    source = GEN_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    r = render(CONV, TemplateSpec("jinja", bos="<s>", eos=EOS, source=source, stop=(EOS,)))
    assert trained(r) == ["[assistant]Yo</s>", "[assistant]Sure</s>"]
    # With one, training starts after it.
    prompted = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    r = render(CONV, TemplateSpec("jinja", bos="<s>", eos=EOS, source=prompted, stop=(EOS,)))
    assert trained(r) == ["Yo</s>", "Sure</s>"]


def test_jinja_raise_exception_is_a_template_error():
    source = "{{ raise_exception('only user/assistant') }}"
    with pytest.raises(TemplateError, match="only user/assistant"):
        render(CONV, TemplateSpec("jinja", source=source))


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{% set x = messages.append(1) %}",
])
def test_sandbox_blocks_python_internals(source):
    with pytest.raises(Exception) as info:
        render(CONV, TemplateSpec("jinja", source=source))
    assert "SecurityError" in type(info.value).__name__ or "unsafe" in str(info.value) \
        or "undefined" in str(info.value).lower()


def read_file(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_resolve_template_errors_are_actionable(tmp_path):
    kwargs = dict(bos="", eos=EOS, sep=None, read_file=read_file)
    assert resolve_template("chatml", tokenizer_chat_template=None, **kwargs).name == "chatml"
    with pytest.raises(ValueError, match="has no chat_template"):
        resolve_template("tokenizer", tokenizer_chat_template=None, **kwargs)
    with pytest.raises(ValueError, match="unknown --template 'nope'"):
        resolve_template("nope", tokenizer_chat_template=None, **kwargs)
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(ValueError, match="Jinja syntax error"):
        resolve_template(str(bad), tokenizer_chat_template=None, **kwargs)
    good = tmp_path / "good.jinja"
    good.write_text(GEN_TEMPLATE)
    spec = resolve_template(str(good), tokenizer_chat_template=None, **kwargs)
    assert (spec.name, spec.origin, spec.source) == ("jinja", str(good), GEN_TEMPLATE)
    from_tokenizer = resolve_template("tokenizer", tokenizer_chat_template=GEN_TEMPLATE, **kwargs)
    assert from_tokenizer.origin == "tokenizer"

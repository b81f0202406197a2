"""The Jinja environment matches transformers' apply_chat_template, with a fixed date; template
options (--template-kwargs, --template-date, --stop-tokens, --rewritten-turns) from the command
line and the config file; launch-time failures in one line."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from sftprep.cli import main
from sftprep.config import ConfigError, parse_template_kwargs
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.jinja_env import DEFAULT_TEMPLATE_DATE
from sftprep.transforms.prepare import (
    PrepareSettings, prepare_batch, resolve_template_and_tokenizer)
from sftprep.transforms.records import Conversation, Message, RawRecord
from sftprep.transforms.templates import (
    TemplateError, TemplateSpec, render, render_examples, resolve_template)
from tests.conftest import DATA, read_records

CONV = Conversation((Message("user", "Hi"), Message("assistant", "Yo")))


def text_of(source, conv=CONV, **fields):
    return render(conv, TemplateSpec("jinja", source=source, **fields)).text


def test_strftime_now_is_the_runs_fixed_date():
    source = "{{ strftime_now('%d %b %Y') }}"
    assert DEFAULT_TEMPLATE_DATE == "2026-01-01"
    assert text_of(source) == "01 Jan 2026"
    assert text_of(source, date="2024-07-26") == "26 Jul 2024"


def test_hf_globals_filters_and_loop_controls():
    assert text_of("{{ {'b': 1, 'a': '<x>'} | tojson(indent=1, sort_keys=True) }}") == \
        '{\n "a": "<x>",\n "b": 1\n}'  # HF's tojson: its arguments, no HTML escaping
    assert text_of("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}"
                   "{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "02"
    assert text_of("{{ dict(a=1)['a'] }}{% set ns = namespace(n=2) %}{{ ns.n }}") == "12"
    with pytest.raises(TemplateError, match="underscore"):
        text_of("{% set ns = namespace(_x=1) %}")
    with pytest.raises(TemplateError, match="only user and assistant"):
        text_of("{{ raise_exception('only user and assistant') }}")
    # trim_blocks and lstrip_blocks, as apply_chat_template sets them
    assert text_of("  {% if true %}\nA{% endif %}\n") == "A"


def test_variables_are_those_apply_chat_template_passes():
    source = ("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | tojson }}|"
              "{{ documents }}|{% for m in messages %}{{ m.role }}:{{ m.content }}:"
              "{{ m.reasoning_content | default('-') }}:{{ m.thinking | default('-') }};"
              "{% endfor %}|{{ enable_thinking }}")
    conv = Conversation((Message("user", "Hi"), Message("assistant", "Yo", reasoning="Hmm")),
                        tools=json.dumps([{"name": "f"}]))
    spec = TemplateSpec("jinja", bos="<s>", eos="</s>", source=source,
                        variables=(("enable_thinking", "false"),))
    assert render(conv, spec).text == \
        '<s>|</s>|False|[{"name": "f"}]|None|user:Hi:-:-;assistant:Yo:Hmm:Hmm;|False'


def test_template_kwargs_parse_and_reach_the_template():
    assert parse_template_kwargs(["enable_thinking=false", "name=Ada", "n=3", "x={\"a\": 1}"]) \
        == (("enable_thinking", "false"), ("n", "3"), ("name", '"Ada"'), ("x", '{"a": 1}'))
    for bad in ("novalue", "messages=1", "=3"):
        with pytest.raises(ConfigError):
            parse_template_kwargs([bad])
    qwen3 = (pathlib.Path(pytest.importorskip("trl").__file__).parent
             / "chat_templates" / "qwen3.jinja").read_text()
    spec = resolve_template("tokenizer", bos="", eos="", sep=None, tokenizer_chat_template=qwen3,
                            read_file=None, variables=(("enable_thinking", "false"),))
    [(_, rendered)] = render_examples(CONV, spec)
    assert rendered.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>\n")
    # Generation prompt with enable_thinking=false already holds the empty think block.
    [(start, end)] = rendered.trained_spans("all_assistant")
    assert rendered.text[start:end] == "Yo<|im_end|>"


def test_options_from_the_command_line_and_the_config_file(tmp_path):
    from sftprep.config import build_config, read_config_file
    from sftprep.pipeline.run import make_parser

    parser = make_parser()
    args, _ = parser.parse_known_args([
        "--input", "x.jsonl", "--output", "o", "--template-kwargs", "enable_thinking=false",
        "--template-date", "2024-07-26", "--stop-tokens", "<|user|>",
        "--stop-tokens", "<|observation|>", "--rewritten-turns", "split"])
    config = build_config(args)
    assert config.template_options() == {
        "template_kwargs": (("enable_thinking", "false"),), "template_date": "2024-07-26",
        "stop_tokens": ("<|user|>", "<|observation|>"), "rewritten_turns": "split"}
    assert config.to_dict()["template_kwargs"] == {"enable_thinking": False}
    path = tmp_path / "c.yaml"
    path.write_text("input: x.jsonl\noutput: o\ntemplate_kwargs: {enable_thinking: false}\n"
                    "stop_tokens: [\"<|user|>\"]\ntemplate_date: '2024-07-26'\n")
    args, _ = parser.parse_known_args([])
    from_file = build_config(args, read_config_file(str(path), lambda p: open(p).read()))
    assert from_file.template_kwargs == (("enable_thinking", "false"),)
    assert from_file.stop_tokens == ("<|user|>",)
    for flags in (["--template-date", "26/07/2024"], ["--rewritten-turns", "first"]):
        with pytest.raises((ConfigError, SystemExit)):
            build_config(parser.parse_known_args(["--input", "x", "--output", "o",
                                                  *flags])[0])


def test_a_template_that_cannot_render_the_probe_fails_at_launch_in_one_line(tmp_path, capsys):
    template = tmp_path / "strict.jinja"
    template.write_text("{% for m in messages %}{% if m.role == 'assistant' %}"
                        "{{ raise_exception('no assistant turns here') }}{% endif %}{% endfor %}")
    code = main(["inspect", "--input", str(DATA / "alpaca_en_demo.jsonl"), "--template",
                 str(template), "--n", "1", "--no-color"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "cannot render a probe conversation" in err[0] and "no assistant turns here" in err[0]


@pytest.fixture
def small_tokenizer(tokenizer_dir, tmp_path):
    """The session tokenizer copied, to add files beside it."""
    target = tmp_path / "tok"
    shutil.copytree(tokenizer_dir[0], target)
    return target


def test_tokenizer_config_holding_a_list_is_one_line(small_tokenizer, capsys):
    (small_tokenizer / "tokenizer_config.json").write_text("[1, 2]")
    code = main(["inspect", "--input", str(DATA / "alpaca_en_demo.jsonl"), "--tokenizer",
                 str(small_tokenizer), "--n", "1", "--no-color"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "must hold a JSON object" in err[0]


GLM_LIKE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_stop_tokens_from_generation_config_end_turns(small_tokenizer, runtime):
    """GLM-4 ends a turn with the next turn's header, which its generation_config lists."""
    ids = [runtime.tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|im_start|>")]
    (small_tokenizer / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    (small_tokenizer / "chat_template.jinja").write_text(GLM_LIKE.replace("<|user|>", "x"))
    spec, *_ = resolve_template_and_tokenizer(str(small_tokenizer), "tokenizer", read_file=None,
                                              stop_tokens=("<|user|>",))
    assert spec.stop[:3] == ("<|user|>", "<|im_end|>", "<|im_start|>")
    glm = TemplateSpec("jinja", source=GLM_LIKE, stop=("<|user|>", "<|observation|>"))
    conv = Conversation((Message("user", "Q1"), Message("assistant", "A1"),
                         Message("user", "Q2"), Message("assistant", "A2")))
    rendered = render(conv, glm)
    assert [rendered.text[s:e] for s, e in rendered.trained_spans("all_assistant")] == \
        ["A1<|user|>", "A2"]


# Reasoning is given on the messages (parsing it from records is another stage's job).
DIALOGUE = Conversation((Message("user", "Q1"), Message("assistant", "A1", reasoning="R1"),
                         Message("user", "Q2"), Message("assistant", "A2", reasoning="R2")))
QWEN3_DIALOGUE = RawRecord("dialogue.jsonl", 7, json.dumps({"messages": [
    {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}))


@pytest.fixture(scope="module")
def qwen3():
    return (pathlib.Path(pytest.importorskip("trl").__file__).parent
            / "chat_templates" / "qwen3.jinja").read_text()


def qwen3_settings(qwen3, policy, train_on="all_assistant"):
    spec = resolve_template("tokenizer", bos="", eos="", sep=None, tokenizer_chat_template=qwen3,
                            read_file=None, rewritten_turns=policy)
    return PrepareSettings(template=spec, train_on=train_on)


def trained_texts(rendered):
    return [rendered.text[s:e] for s, e in rendered.trained_spans("all_assistant")]


def test_rewritten_turns_policies(qwen3):
    """Qwen3 renders R1 only while A1 is the last turn: the record is rewritten."""
    first = "<think>\nR1\n</think>\n\nA1<|im_end|>"
    second = "<think>\nR2\n</think>\n\nA2<|im_end|>"

    def examples(policy, train_on="all_assistant"):
        return render_examples(DIALOGUE, qwen3_settings(qwen3, policy).template, train_on)

    [(conv, last)] = examples("last")
    assert last.rewritten and trained_texts(last) == [second] and len(conv.messages) == 4
    split = examples("split")
    assert [trained_texts(r) for _, r in split] == [[first], [second]]
    assert [len(c.messages) for c, _ in split] == [2, 4]
    assert split[0][1].text.endswith(first + "\n") and "R1" not in split[1][1].text
    [(_, rendered)] = examples("as_rendered")
    assert trained_texts(rendered) == ["A1<|im_end|>", second]
    assert len(examples("split", "last_assistant")) == 1  # --train-on last_assistant never splits


def test_split_examples_are_counted_and_the_accounting_holds(qwen3, runtime):
    records = read_records("glaive_toolcall_en_demo.jsonl", limit=30) + [QWEN3_DIALOGUE]
    batch = prepare_batch(records, qwen3_settings(qwen3, "split"), runtime)
    stats = dict(batch.stats)
    stats_lib.bump(stats, "written", "train", "x", by=len(batch.examples))
    summary = stats_lib.summarize(stats)
    assert summary["split_examples"] > 0 and summary["rewritten_turns"]["split"] > 0
    assert summary["accounting"]["holds"]
    mine = [e for e in batch.examples if e.source == "dialogue.jsonl"]
    assert [e.source_line for e in mine] == [7, 7]  # both carry the record's line
    assert len({e.example_id for e in mine}) == 2  # each its own id (its conversation's)


def test_run_records_the_template_date_and_split_counts(tmp_path, qwen3):
    template = tmp_path / "qwen3.jinja"
    template.write_text(qwen3)
    data = tmp_path / "d.jsonl"
    data.write_text(QWEN3_DIALOGUE.text + "\n")
    out = tmp_path / "out"
    assert main(["run", "--input", str(data), "--output", str(out), "--template", str(template),
                 "--rewritten-turns", "split", "--template-date", "2024-07-26"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["template_date"] == "2024-07-26"
    assert manifest["config"]["rewritten_turns"] == "split"
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["records_read"], stats["split_examples"], stats["rows_written"]) == (1, 1, 2)
    assert stats["accounting"]["holds"]


def test_inspect_shows_each_split_example(tmp_path, qwen3, capsys):
    template = tmp_path / "qwen3.jinja"
    template.write_text(qwen3)
    data = tmp_path / "d.jsonl"
    data.write_text(QWEN3_DIALOGUE.text + "\n")
    for policy, shown in (("last", 1), ("split", 2), ("as_rendered", 1)):
        assert main(["inspect", "--input", str(data), "--template", str(template),
                     "--rewritten-turns", policy, "--no-color"]) == 0
        out = capsys.readouterr().out
        assert out.count("⟦") >= shown  # trained tokens highlighted in each
        assert out.count("d.jsonl:1") == shown, out[:400]

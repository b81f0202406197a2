"""Conformance of the official chat templates TRL ships (`trl/chat_templates/*.jinja`): every cell of
the table in docs/templates.md is asserted here, parametrized over the templates.

Columns: renders like `apply_chat_template` (ids equal on the bundled data), terminator trained,
prefix-preserving, agrees with the training variant (or the named difference). Plus mask parity
on the bundled messages / ShareGPT / tool-call files, and answers that also occur in the
template's own text. To keep CI short, each file contributes its first 40 records per template.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

trl = pytest.importorskip("trl")

from sftprep.transforms.formats import parse_record  # noqa: E402
from sftprep.transforms.normalize import normalize_conversation  # noqa: E402
from sftprep.transforms.prepare import PrepareSettings, examples_of, prepare_batch  # noqa: E402
from sftprep.transforms.records import Conversation, Message, Rejection  # noqa: E402
from sftprep.transforms.templates import render_examples, resolve_template  # noqa: E402
from tests.transforms.test_mask_parity import trained_runs  # noqa: E402

CHAT_TEMPLATES = pathlib.Path(trl.__file__).parent / "chat_templates"
GLM_STOPS = ("<|user|>", "<|observation|>")  # GLM-4.5's generation_config.json eos ids

# name: (text the model writes before the answer after the generation prompt, the terminator of
# an answer, prefix-preserving (HF's own rendering), differences from the training variant
# (None: no variant)).
TABLE = {
    "cohere": ("", "<|END_OF_TURN_TOKEN|>", True, set()),
    "cohere2": ("", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", True, set()),
    "deepseek_r1_distill": ("", "<｜end▁of▁sentence｜>", False, {"header"}),
    "deepseekv3": ("", "<｜end▁of▁sentence｜>", False, {"header"}),
    "gemma": ("", "<end_of_turn>", True, {"newline"}),
    "gemma3": ("", "<end_of_turn>", True, {"newline"}),
    "gemma4": ("", "<turn|>", True, None),
    "glm4moe": ("\n<think></think>\n", "", True, {"text"}),
    "gptoss": ("<|channel|>final<|message|>", "<|return|>", False, {"header"}),
    "lfm2": ("", "<|im_end|>", True, {"newline"}),
    "lfm2_v2": ("", "<|im_end|>", True, {"newline"}),
    "lfm2_2_5": ("", "<|im_end|>\n", True, None),  # has generation blocks of its own
    "lfm2_2_5_v2": ("", "<|im_end|>\n", True, None),
    "llama3": ("", "<|eot_id|>", True, set()),
    "llama3_1": ("", "<|eot_id|>", True, None),
    "llama3_2": ("", "<|eot_id|>", True, None),
    "muse_glimmer": (" to=user<|message|>", "<|eot|>", True, {"header"}),
    "nemotron_3_nano": ("</think>", "<|im_end|>", False, {"header", "newline"}),
    "nemotron_3_super": ("</think>", "<|im_end|>", False, {"header", "newline"}),
    "nemotron_3_ultra": ("</think>", "<|im_end|>", False, {"header", "newline"}),
    "nemotron_3_5_lightning": ("</think>", "<|im_end|>", False, {"header", "newline"}),
    "phi3": ("", "<|end|>", True, {"eos", "newline"}),
    "phi3_5": ("", "<|end|>", True, {"eos", "newline"}),
    "qwen2_5": ("", "<|im_end|>", True, {"header", "newline"}),
    "qwen3": ("<think>\n\n</think>\n\n", "<|im_end|>", False, {"text", "newline"}),
    "qwen3_5_nothink": ("", "<|im_end|>", False, {"text", "header", "newline"}),
    "qwen3_5_think": ("\n</think>\n\n", "<|im_end|>", False, {"text", "header", "newline"}),
    "qwen3_6": ("\n</think>\n\n", "<|im_end|>", False, {"text", "header", "newline"}),
    "qwen3_8": ("\n</think>\n\n", "<|im_end|>", True, {"header", "newline"}),
    "qwen3_instruct_2507": ("", "<|im_end|>", True, {"newline"}),
}
NAMES = sorted(TABLE)
# Rows (of the records compared) where, with the default tokenizer, a token crosses the edge of a
# trained span: the DeepSeek vocabulary knows none of these templates' control tokens, so a
# terminator's last characters merge with what follows (`|><|`, `>\n`) or `\n` + `\n` merge.
CROSSED = {"cohere": 18, "cohere2": 18, "gemma": 99, "gemma3": 99, "gemma4": 96, "glm4moe": 120,
           "llama3": 37, "llama3_1": 37, "llama3_2": 37, "muse_glimmer": 37, "phi3": 120,
           "phi3_5": 120, "qwen3_5_think": 120, "qwen3_6": 120, "qwen3_8": 120}
# Templates that do not render an assistant message's tool_calls (so neither does sftprep).
IGNORE_TOOL_CALLS = {"deepseek_r1_distill", "lfm2", "llama3", "phi3", "phi3_5"}


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def spec_of(name, token_info, runtime, variant=False):
    path = CHAT_TEMPLATES / f"{name}{'_training' if variant else ''}.jinja"
    return resolve_template(str(path), bos=token_info.bos, eos=token_info.eos, sep=None,
                            tokenizer_chat_template=None, read_file=_read,
                            stop=GLM_STOPS if name.startswith("glm") else (),
                            control_tokens=runtime.special_strings)




@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir[0]))


def hf_messages(conv: Conversation):
    """The conversation as a user hands it to apply_chat_template (built here, not by sftprep)."""
    out = []
    for m in conv.messages:
        item = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [{"type": "function", "function": {
                "name": c.name, "arguments": json.loads(c.arguments)}} for c in m.tool_calls]
        if m.reasoning:
            item["reasoning_content"] = m.reasoning
        out.append(item)
    return out


def widened(offsets, spans):
    """Which tokens hold a character of a span (the `--crossing-tokens train` rule, as
    transformers' `return_assistant_tokens_mask` marks tokens), from the tokenizer's offsets."""
    return [any(a < end and b > start for start, end in spans if start < end)
            for a, b in offsets]


def conformance(spec, runtime, hf_tokenizer, records):
    """Checks every record against `apply_chat_template` with the same tokenizer; returns (rows
    compared, rows where a token crosses the edge of a trained span).

    sftprep rejects exactly the records transformers refuses and renders the same text; with
    the default --crossing-tokens train, its ids are the tokenizer's ids of that text and the
    trained tokens are those that hold a trained character; with split, ids differ exactly on
    the rows where a token crosses a span's edge.
    """
    settings = PrepareSettings(template=spec, max_length=1_000_000)
    split = dataclasses.replace(settings, crossing_tokens="split")
    compared = crossed = 0
    for file_records in records.values():
        by_line = {e.source_line: e for e in prepare_batch(file_records, settings, runtime).examples}
        cut = None  # the file prepared with split, when a row crosses (else it is the same)
        for record in file_records:
            where = f"{spec.source[:40]!r}: {record.source}:{record.line}"
            outcome = examples_of(record, settings)
            conv = normalize_conversation(parse_record(record))
            tools = json.loads(conv.tools) if conv.tools else None
            try:
                expected = hf_tokenizer.apply_chat_template(
                    hf_messages(conv), tools=tools, chat_template=spec.source, tokenize=False)
            except Exception:  # noqa: BLE001 (any refusal)
                expected = None
            refused = isinstance(outcome, Rejection)
            assert refused == (expected is None), where
            if refused:
                assert outcome.reason == "template_error"
                continue
            conv, rendered = outcome[-1]
            if rendered.rewritten and rendered.text != expected:
                continue  # --rewritten-turns last trained the final turn in its own rendering
            assert rendered.text == expected, where
            if record.line not in by_line or len(outcome) > 1:
                continue
            ids = hf_tokenizer.encode(expected, add_special_tokens=False)
            example = by_line[record.line]
            assert example.input_ids.tolist() == ids, where
            offsets = runtime.tokenizer.encode(expected, add_special_tokens=False).offsets
            spans = rendered.trained_spans("all_assistant")
            assert (example.labels != -100).tolist() == widened(offsets, spans), where
            crossing = any(a < edge < b for a, b in offsets for span in spans for edge in span)
            if crossing and cut is None:
                cut = {e.source_line: e
                       for e in prepare_batch(file_records, split, runtime).examples}
            if cut is not None:
                assert (cut[record.line].input_ids.tolist() == ids) != crossing, where
            compared += 1
            crossed += crossing
    return compared, crossed


@pytest.mark.parametrize("name", NAMES)
def test_renders_like_apply_chat_template(name, token_info, runtime, hf_tokenizer, records,
                                          fixed_date):
    compared, crossed = conformance(spec_of(name, token_info, runtime), runtime, hf_tokenizer,
                                    records)
    assert compared >= 30
    assert crossed == CROSSED.get(name, 0)


def test_rejections_are_the_records_apply_chat_template_refuses(token_info, runtime,
                                                                 hf_tokenizer, records):
    spec = spec_of("deepseekv3", token_info, runtime)  # concatenates arguments as strings
    settings = PrepareSettings(template=spec)
    for record in records["glaive_toolcall_en_demo.jsonl"]:
        outcome = examples_of(record, settings)
        if isinstance(outcome, Rejection):
            assert outcome.reason == "template_error" and "TypeError" in outcome.detail


@pytest.mark.parametrize("name", NAMES)
def test_mask_parity(name, token_info, runtime, records):
    """Decoding the trained tokens gives the assistant text plus the turn's terminator, and
    nothing of the prompt: the answer between the template's fixed opening and terminator,
    each tool call's name, and no other message's text. Exactly so under `--crossing-tokens
    split`; under `train` a crossing token adds its other characters, which
    test_renders_like_apply_chat_template checks token by token."""
    spec = spec_of(name, token_info, runtime)
    settings = PrepareSettings(template=spec, max_length=1_000_000, crossing_tokens="split")
    before, terminator = TABLE[name][:2]
    checked = 0
    for file_name, file_records in records.items():
        batch = prepare_batch(file_records, settings, runtime)
        by_line = {r.line: r for r in file_records}
        for example in batch.examples:
            conv, rendered = examples_of(by_line[example.source_line], settings)[-1]
            trained = [i for i, m in enumerate(conv.messages) if m.role == "assistant"
                       and m.trainable is not False]
            if rendered.rewritten:
                trained = [max(i for i, m in enumerate(conv.messages) if m.role == "assistant")]
            runs = trained_runs(runtime, example.input_ids, example.labels)
            assert len(runs) == len(trained), f"{file_name}:{example.source_line}"
            for index, run in zip(trained, runs):
                message = conv.messages[index]
                final = index == len(conv.messages) - 1
                ending = terminator
                if name.startswith("glm") and not final:
                    ending = "<|observation|>" if conv.messages[index + 1].role == "tool" \
                        else "<|user|>"
                assert run.endswith(ending), (file_name, example.source_line, run[-60:])
                body = run[:len(run) - len(ending)]
                if not message.tool_calls:
                    opening = before if final or not rendered.rewritten else ""
                    assert body.startswith(opening) and \
                        body[len(opening):].strip() == message.content.strip(), \
                        (file_name, example.source_line, run[:80])
                else:
                    assert message.content.strip() in body
                    if name not in IGNORE_TOOL_CALLS:
                        assert all(c.name in body for c in message.tool_calls)
                for other in conv.messages:
                    if other.role != "assistant" and len(other.content.strip()) >= 12:
                        assert other.content.strip() not in run
                checked += 1
    assert checked >= 50


PROBE = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "2 + 2 = 4."),
                      Message("user", "And 3 + 3?"), Message("assistant", "3 + 3 = 6.")))


@pytest.mark.parametrize("name", NAMES)
def test_terminator_trained(name, token_info, runtime):
    spec = spec_of(name, token_info, runtime)
    conv, rendered = render_examples(PROBE, spec)[-1]
    runs = [rendered.text[s:e] for s, e in rendered.trained_spans("all_assistant")]
    before, terminator, *_ = TABLE[name]
    assert runs[-1] == before + "3 + 3 = 6." + terminator


@pytest.mark.parametrize("name", NAMES)
def test_prefix_preserving(name, token_info, runtime):
    """The column as transformers' own renderer computes it: each assistant turn rendered as
    the last message (what the model generated) is a prefix of the whole conversation; sftprep
    flags the record as rewritten exactly when it is not (the generation prompt aside)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    source = _read(CHAT_TEMPLATES / f"{name}.jinja")
    messages = [{"role": m.role, "content": m.content} for m in PROBE.messages]

    def hf(count, prompt):
        [text], _ = render_jinja_template([messages[:count]], chat_template=source,
                                          add_generation_prompt=prompt,
                                          bos_token=token_info.bos, eos_token=token_info.eos)
        return text

    full = hf(4, False)
    terminator = TABLE[name][1]

    def turn(count):  # the conversation up to an answer, as the model generated it
        alone = hf(count, False)
        return alone[:alone.rfind(terminator) + len(terminator)] if terminator \
            else alone.rstrip()

    history_kept = all(full.startswith(turn(i + 1)) for i in (1, 3))
    prompt_kept = all(hf(i + 1, False).startswith(hf(i, True)) for i in (1, 3))
    assert (history_kept and prompt_kept) == TABLE[name][2]
    _, rendered = render_examples(PROBE, spec_of(name, token_info, runtime))[-1]
    assert rendered.rewritten == (not history_kept)


def _differences(original, variant):
    """How the training variant's trained spans differ from sftprep's on the original."""
    kinds = set()
    if original.text != variant.text:
        return {"text"}
    text = original.text
    ours, theirs = original.trained_spans("all_assistant"), variant.trained_spans("all_assistant")
    if original.rewritten:  # --rewritten-turns last: only the final turns compare
        ours, theirs = ours[-1:], theirs[-1:]
    for (s1, e1), (s2, e2) in zip(ours, theirs):
        if s2 < s1:
            kinds.add("header")  # the variant trains what the generation prompt wrote
        if s2 > s1:
            kinds.add("later_start")
        if e2 > e1:
            kinds.add("newline" if not text[e1:e2].strip() else "eos")
        if e2 < e1:
            kinds.add("earlier_end")
    return kinds


@pytest.mark.parametrize("name", [n for n in NAMES if TABLE[n][3] is not None])
def test_agrees_with_training_variant(name, token_info, runtime, records):
    original = spec_of(name, token_info, runtime)
    variant = spec_of(name, token_info, runtime, variant=True)
    kinds = set()
    for file_records in records.values():
        for record in file_records:
            a = examples_of(record, PrepareSettings(template=original))
            b = examples_of(record, PrepareSettings(template=variant))
            if isinstance(a, Rejection) or isinstance(b, Rejection):
                continue
            kinds |= _differences(a[-1][1], b[-1][1])
    assert kinds == TABLE[name][3]


ANSWERS = ("a", "t", "assistant", "user", "system", "model", "<", "|", "start_header_id",
           "im_start", "end", "A", "\n")


@pytest.mark.parametrize("name", NAMES)
def test_answers_that_occur_in_the_template_are_trained_where_they_are(name, token_info,
                                                                      runtime):
    spec = spec_of(name, token_info, runtime)
    before, terminator, *_ = TABLE[name]
    settings = PrepareSettings(template=spec)
    split = dataclasses.replace(settings, crossing_tokens="split")
    from sftprep.transforms.records import RawRecord

    for answer in ANSWERS:
        record = RawRecord("answers", 1, json.dumps({"messages": [
            {"role": "user", "content": "Say it."}, {"role": "assistant", "content": answer}]}))
        outcome = examples_of(record, settings)
        if isinstance(outcome, Rejection):
            assert answer.strip() == "", outcome  # only a blank answer may be refused
            continue
        _, rendered = outcome[-1]
        [(start, end)] = rendered.trained_spans("all_assistant")
        assert rendered.text[start:end] in (before + answer + terminator,
                                            before + answer.strip() + terminator)
        [example] = prepare_batch([record], split, runtime).examples
        assert trained_runs(runtime, example.input_ids, example.labels) == \
            [rendered.text[start:end]]
        [example] = prepare_batch([record], settings, runtime).examples
        offsets = runtime.tokenizer.encode(rendered.text, add_special_tokens=False).offsets
        assert (example.labels != -100).tolist() == widened(offsets, [(start, end)])


RENDERS_REASONING = {"glm4moe", "gptoss", "lfm2_2_5", "lfm2_2_5_v2", "muse_glimmer",
                     "nemotron_3_5_lightning", "nemotron_3_nano", "nemotron_3_super",
                     "nemotron_3_ultra", "qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6",
                     "qwen3_8"}


@pytest.mark.parametrize("name", NAMES)
def test_reasoning_is_trained_where_the_template_renders_it(name, token_info, runtime):
    """`reasoning_content` reaches the template; where it renders it, it is trained with the
    answer and the terminator, in the decoded tokens too."""
    from sftprep.tokenizer.labels import tokenize_batch

    reasoning, answer = "Two plus two makes four.", "It is 4."
    conv = Conversation((Message("user", "What is 2 + 2?"),
                         Message("assistant", answer, reasoning=reasoning)))
    [(_, rendered)] = render_examples(conv, spec_of(name, token_info, runtime))
    [(start, end)] = rendered.trained_spans("all_assistant")
    trained = rendered.text[start:end]
    assert (reasoning in rendered.text) == (name in RENDERS_REASONING)
    assert answer in trained and "What is 2 + 2?" not in trained
    if name in RENDERS_REASONING:
        assert reasoning in trained
        assert trained.index(reasoning) < trained.index(answer)
    [tokens] = tokenize_batch(runtime, [rendered], [[(start, end)]], crossing="split")
    assert trained_runs(runtime, tokens.input_ids, tokens.labels) == [trained]

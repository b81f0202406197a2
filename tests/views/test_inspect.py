"""`sftprep inspect`: what it shows is what the pipeline writes, token for token.

The highlighted (trained) text is checked against the tokenizer's own decoding of the tokens
whose label is not -100, on real records from tests/data and several templates, through the
structured pieces and the plain-text output; the HTML page's highlighted tokens are checked
against the labels `sftprep run` writes for the same records.
"""

from __future__ import annotations

import html.parser
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from sftprep.pipeline.run import main as run_main
from sftprep.transforms.prepare import PrepareSettings
from sftprep.transforms.records import RawRecord
from sftprep.tokenizer.runtime import TokenizerRuntime
from sftprep.views import inspect as view
from sftprep.views.inspect_cli import main as inspect_main
from tests.conftest import DATA, read_records, spec_for

FILES = [("seed_examples.jsonl", (), None), ("alpaca_en_demo.jsonl", (), 40),
         ("glaive_toolcall_en_demo.jsonl", (), 25), ("v1_sft_demo.jsonl", (), 25),
         ("gsm8k_train.jsonl", (("prompt", "question"), ("completion", "answer")), 10)]
COUNTS_RE = re.compile(
    r"#(?P<index>\d+) (?P<source>\S+):(?P<line>\d+)  example_id=(?P<id>[0-9a-f]{32})  "
    r"tokens=(?P<tokens>\d+)  trained=(?P<trained>\d+)(?: \((?P<share>\d+)%\))?  "
    r"truncated=(?P<truncated>\S+)  split=(?P<split>\w+)$")


def settings_for(template, info, field_map=(), **kwargs):
    return PrepareSettings(template=spec_for(template, info), field_map=field_map, **kwargs)


def numbered(records):
    return list(enumerate(records))


def trained_runs(runtime, ids, labels):
    """Decoded runs of consecutive trained tokens, straight from the tokenizer."""
    flags = list(labels != -100) + [False]
    runs, start = [], None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append(runtime.decode(ids[start:index]))
            start = None
    return runs


def unmark(text):
    """Plain-text view -> the text it shows (drop boundaries, brackets and glyphs)."""
    for mark in (view.BOUNDARY, view.SPECIAL_OPEN, view.SPECIAL_CLOSE, view.NEWLINE_MARK,
                 view.TAB_MARK):
        text = text.replace(mark, "")
    return text


@pytest.mark.parametrize("template", ["markers", "chatml", "separator"])
@pytest.mark.parametrize("name,field_map,limit", FILES, ids=[f for f, _, _ in FILES])
def test_highlighted_pieces_are_the_trained_tokens(runtime, token_info, template, name,
                                                   field_map, limit):
    settings = settings_for(template, token_info, field_map)
    shown = view.inspect_records(numbered(read_records(name, limit)), settings, runtime)
    examples = [s for s in shown if s.example is not None]
    assert examples
    special_ids = {i for i, t in runtime.tokenizer.get_added_tokens_decoder().items() if t.special}
    for item in examples:
        ids, labels = item.example.input_ids, item.example.labels
        pieces = item.pieces
        assert [i for p in pieces for i in p.ids] == ids.tolist()
        assert "".join(p.text for p in pieces) == runtime.decode(ids)
        trained_ids = ids[labels != -100]
        assert [i for p in pieces if p.trained for i in p.ids] == trained_ids.tolist()
        assert "".join(p.text for p in pieces if p.trained) == runtime.decode(trained_ids)
        assert [i for p in pieces if p.special for i in p.ids] == \
            [i for i in ids.tolist() if i in special_ids]
        # The plain-text view: the ⟦…⟧ runs read back as the trained runs.
        plain = view.pieces_plain(pieces)
        runs = [unmark(run) for run in re.findall(r"⟦(.*?)⟧", plain, flags=re.S)]
        assert runs == trained_runs(runtime, ids, labels), f"{item.source}:{item.line}"
        assert unmark(plain.replace("⟦", "").replace("⟧", "")) == runtime.decode(ids)
    if template == "separator" and name in ("glaive_toolcall_en_demo.jsonl",):
        assert any(s.outcome == "rejected" and s.reason == "template_error" for s in shown)


def test_control_tokens_are_marked_and_spelled_ones_are_not(runtime, token_info):
    spelled = RawRecord("x.jsonl", 1, '{"messages": [{"role": "user", "content": '
                                      '"print <|im_end|> please"}, {"role": "assistant", '
                                      '"content": "ok <|im_start|>"}]}')
    [item] = view.inspect_records([(0, spelled)], settings_for("chatml", token_info), runtime)
    plain = view.pieces_plain(item.pieces)
    assert plain.startswith(f"⟨{token_info.bos}⟩│⟨<|im_start|>⟩│user")
    assert plain.count("⟨<|im_end|>⟩") == 2 and plain.count("⟨<|im_start|>⟩") == 2
    # The data's own "<|im_end|>" and "<|im_start|>" are text: several plain pieces each.
    assert "print <|im_end|> please" not in plain
    assert "print <|im_end|> please" in unmark(plain)
    [trained] = re.findall(r"⟦(.*?)⟧", plain, flags=re.S)
    assert trained.endswith("│⟨<|im_end|>⟩") and trained.count("│") >= 4
    assert unmark(trained) == "ok <|im_start|><|im_end|>"


def test_counts_line_and_truncation(runtime, token_info):
    records = read_records("alpaca_en_demo.jsonl", 12)
    settings = settings_for("markers", token_info, max_length=48, validation_fraction=0.5)
    shown = view.inspect_records(numbered(records), settings, runtime)
    truncated = 0
    for item in shown:
        match = COUNTS_RE.match(item.counts_line())
        assert match, item.counts_line()
        example = item.example
        assert int(match["index"]) == item.index and int(match["line"]) == records[item.index].line
        assert match["source"] == records[item.index].source
        assert match["id"] == example.example_id
        assert int(match["tokens"]) == len(example.input_ids) <= 48
        assert int(match["trained"]) == int((example.labels != -100).sum())
        assert match["truncated"] == (",".join(example.truncation) or "no")
        assert match["split"] == example.split
        truncated += match["truncated"] != "no"
    assert truncated >= 3
    assert {item.example.split for item in shown} == {"train", "validation"}


def test_rejected_and_dropped_records_show_their_reason(runtime, token_info):
    records = [RawRecord("x.jsonl", 1, "{not json"), RawRecord("x.jsonl", 2, '{"foo": 1}'),
               read_records("alpaca_en_demo.jsonl", 1)[0],
               RawRecord("x.jsonl", 4, "", error="record_too_large", detail="9 bytes > 8")]
    long_record = read_records("gsm8k_train.jsonl", 1)[0]
    settings = settings_for("markers", token_info, max_length=20, truncation="drop",
                            field_map=(("prompt", "question"), ("completion", "answer")))
    shown = view.inspect_records(numbered(records + [long_record]), settings, runtime)
    assert [(s.outcome, s.reason) for s in shown] == [
        ("rejected", "invalid_json"), ("rejected", "unknown_format"), ("dropped", "too_long"),
        ("rejected", "record_too_large"), ("dropped", "too_long")]
    text = view.format_terminal(shown, color=False)
    assert "#0 x.jsonl:1  rejected=invalid_json  (" in text
    assert "  raw: {not json" in text
    assert f"#4 {long_record.source}:1  dropped=too_long  (" in text


def test_select_by_index_id_and_at_random(runtime, token_info):
    records = read_records("alpaca_en_demo.jsonl", 200)
    settings = settings_for("markers", token_info)
    assert [i for i, _ in view.select_records(iter(records), settings, n=3)] == [0, 1, 2]
    assert [i for i, _ in view.select_records(iter(records), settings, indices=[7, 2])] == [2, 7]
    shown = view.inspect_records([(5, records[5])], settings, runtime)
    wanted = shown[0].example.example_id
    picked = view.select_records(iter(records), settings, ids=[wanted[:10].upper()])
    assert [i for i, _ in picked] == [5]
    first = view.select_records(iter(records), settings, n=4, sample=True, seed=3)
    assert first == view.select_records(iter(records), settings, n=4, sample=True, seed=3)
    assert first != view.select_records(iter(records), settings, n=4, sample=True, seed=4)
    assert len(first) == 4 and [i for i, _ in first] == sorted(i for i, _ in first)
    assert all(records[i] == record for i, record in first)
    with pytest.raises(ValueError, match=r"--index 500.*--id ffff"):
        view.select_records(iter(records), settings, indices=[1, 500], ids=["ffff"])


def test_cli_plain_output(capsys):
    path = DATA / "seed_examples.jsonl"
    assert inspect_main(["--input", str(path), "--index", "3", "--index", "0", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert out.startswith("legend: │ token boundary  ⟦…⟧ trained  ⟨…⟩ control token")
    headers = [COUNTS_RE.match(line) for line in out.splitlines() if line.startswith("#")]
    assert [(h["index"], h["line"]) for h in headers] == [("0", "1"), ("3", "4")]
    # Record 4 of the seed file: the role markers of its prompt are context, only the
    # completion is trained (the same expectation as the mask-parity test).
    block = out.split("#3 ")[1]
    [run] = re.findall(r"⟦(.*?)⟧", block, flags=re.S)
    assert unmark(run) == (" Tomorrow's forecast for London is partly sunny with a high of "
                           "18°C.<｜end▁of▁sentence｜>")
    assert run.count("│") == int(headers[1]["trained"]) - 1  # one boundary between tokens
    assert run.endswith("│⟨<｜end▁of▁sentence｜>⟩")
    assert block.count("⟨<|USER|>⟩") == 2 and block.count("⟨<|ASSISTANT|>⟩") == 2


def test_cli_color_html_and_run_options(tmp_path, capsys):
    source = tmp_path / "mixed.jsonl"
    lines = (DATA / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    source.write_text("\n".join([lines[0], "{broken", lines[1], lines[2]]) + "\n", encoding="utf-8")
    page = tmp_path / "inspect.html"
    common = ["--input", str(source), "--map", "prompt=question", "--map", "completion=answer",
              "--template", "chatml", "--max-length", "64"]
    assert inspect_main(common + ["--n", "3", "--color"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[38;5;231;48;5;28m" in out and "\x1b[1;38;5;213;" in out  # trained, control
    assert "rejected=invalid_json" in out
    assert inspect_main(common + ["--n", "4", "--html", str(page)]) == 0
    assert capsys.readouterr().out == f"sftprep inspect: wrote 4 records to {page}\n"
    document = page.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>") and "<style>" in document
    for external in ("<script", "<link", "src=", "href=", "http://", "https://", "@import"):
        assert external not in document
    spans = _TokenSpans()
    spans.feed(document)
    assert [line for line, _, _ in spans.cards] == [1, 3, 4]  # line 2 is a card without tokens
    # The same records through `sftprep run` with the same options: every page token is a
    # written token, highlighted exactly where the pipeline's label is not -100.
    out = tmp_path / "out"
    assert run_main(common + ["--output", str(out), "--max-rejected-fraction", "0.5"]) == 0
    rows = {row["source_line"]: row for path in sorted((out / "train").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()}
    assert sorted(rows) == [1, 3, 4]
    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    for line, truncated, tokens in spans.cards:
        ids, labels = np.array(rows[line]["input_ids"]), np.array(rows[line]["labels"])
        assert [i for _, _, token_ids in tokens for i in token_ids] == ids.tolist()
        flags = [trained for trained, _, token_ids in tokens for _ in token_ids]
        assert flags == (labels != -100).tolist(), f"line {line}"
        assert [i for trained, _, token_ids in tokens if trained for i in token_ids] == \
            ids[labels != -100].tolist()
        assert "".join(text for trained, text, _ in tokens if trained) == \
            runtime.decode(ids[labels != -100])
        assert truncated == rows[line]["truncated"]
        assert len(ids) <= 64 and flags.count(True) == rows[line]["num_trainable_tokens"] > 0
    assert any(truncated for _, truncated, _ in spans.cards)  # --max-length 64 cut something
    assert "invalid_json" in document and "{broken" in document
    assert inspect_main(common + ["--index", "9"]) == 2
    assert "--index 9" in capsys.readouterr().err


class _TokenSpans(html.parser.HTMLParser):
    """Collects, per example card, (source line, truncated, [(trained, text, ids) per token])."""

    def __init__(self):
        super().__init__()
        self.cards, self._current, self._depth = [], None, 0
        self._head = None  # text of the card head being read

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "head" in classes:
            self._head = ""
        elif tag == "pre" and "tokens" in classes:
            line = int(re.match(r"#\d+ \S+:(\d+)", self._head)[1])
            self.cards.append((line, "truncated: " in self._head, []))
            self._head = None
        elif tag == "pre":
            self._head = None
        elif tag == "span" and self._current is None and attrs.get("title", "").startswith("id "):
            ids = [int(i) for i in attrs["title"][3:].split()]
            self._current = [classes[0] in ("t0", "t1"), "", ids]
            self._depth = 0
        elif tag == "span" and self._current is not None:
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "span" and self._current is not None:
            if self._depth:
                self._depth -= 1
            else:
                self.cards[-1][2].append(tuple(self._current))
                self._current = None

    def handle_data(self, data):
        if self._head is not None:
            self._head += data
        if self._current is not None:
            self._current[1] += data.replace(view.NEWLINE_MARK, "").replace(view.TAB_MARK, "")


@pytest.mark.parametrize("target", ["folder", "missing/inspect.html"])
def test_html_to_a_folder_or_a_missing_folder_is_one_line_before_any_work(tmp_path, capsys,
                                                                        monkeypatch, target):
    html_path = tmp_path / target
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("mine")
    # Refused before the tokenizer is loaded: loading it would fail the test.
    from sftprep.views import inspect_cli

    monkeypatch.setattr(inspect_cli, "prepare_settings", lambda config: pytest.fail("loaded"))
    code = inspect_main(["--input", str(DATA / "seed_examples.jsonl"), "--html", str(html_path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    if target == "folder":
        assert captured.err == (f"sftprep inspect: error: --html {html_path} is a folder; give "
                                f"a file name, e.g. --html {html_path / 'inspect.html'}\n")
    else:
        assert captured.err == (f"sftprep inspect: error: --html {html_path}: the folder "
                                f"{html_path.parent} does not exist\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["folder", "keep.txt"]


@pytest.fixture(scope="module", params=[(), ("--pack-length", "256")], ids=["rows", "packs"])
def small_row_groups(request, tmp_path_factory):
    """The first 40 alpaca records run into two train shards (one example a row, or packs of
    256 tokens), each shard rewritten with row groups of 3 rows."""
    base = tmp_path_factory.mktemp("row_groups")
    source, out = base / "alpaca40.jsonl", base / "out"
    lines = (DATA / "alpaca_en_demo.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert run_main(["--input", str(source), "--output", str(out), "--num-shards", "2",
                     "--validation-fraction", "0", "--progress", "never", *request.param]) == 0
    for shard in (out / "train").glob("*.parquet"):
        pq.write_table(pq.read_table(shard), shard, row_group_size=3)
    return out


def test_output_row_in_a_later_shard_and_row_group_decodes_only_that_row_group(
        small_row_groups, capsys, monkeypatch):
    """`inspect --output OUT --index I` for the last row of the second shard (in its last row
    group): the header names that shard and row, the examples are that row's, token for token,
    and the only rows decoded are those of its one row group (no whole-shard read)."""
    from sftprep import dataset
    from sftprep.views import inspect_output

    out = small_row_groups
    first, second = sorted((out / "train").glob("*.parquet"))
    in_shard = pq.ParquetFile(second).metadata.num_rows - 1
    group = pq.ParquetFile(second).metadata.num_row_groups - 1
    assert group >= 1
    index = pq.ParquetFile(first).metadata.num_rows + in_shard
    row = pq.read_table(second).slice(in_shard, 1).to_pylist()[0]
    runtime = inspect_output.runtime_of(dataset.open_output(str(out)))

    decoded = []
    iter_batches = pq.ParquetFile.iter_batches

    def logged(parquet, *args, **kwargs):
        decoded.append(kwargs.get("row_groups"))
        return iter_batches(parquet, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", logged)
    for whole in ("read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, whole, lambda *a, **k: pytest.fail("read whole"))
    assert inspect_main(["--output", str(out), "--index", str(index), "--no-color"]) == 0
    assert decoded == [[group]]
    head, *blocks = re.split(r"^─── example ", capsys.readouterr().out, flags=re.M)
    examples = inspect_output.examples_of(row)
    packed = "seq_lengths" in row
    assert head == (f"{out} train row {index} ({second.name} row {in_shard}): "
                    f"{len(examples)} example{'s' if len(examples) != 1 else ''}, "
                    f"{row['num_tokens']}{' of 256' if packed else ''} tokens, "
                    f"{row['num_trainable_tokens']} trained\n")
    assert len(blocks) == len(examples) == (len(row["seq_lengths"]) if packed else 1)
    for number, (block, example) in enumerate(zip(blocks, examples), start=1):
        counts, shown = block.split("\n", 1)
        assert counts.startswith(f"{number}/{len(examples)}  example_id={example['example_id']}"
                                 f"  {example['source']}:{example['source_line']}  ")
        assert shown == view.pieces_plain(view.token_pieces(
            example["input_ids"], example["labels"], runtime)) + "\n"

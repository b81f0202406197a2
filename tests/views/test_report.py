"""The run report as a pure function: a known stats document in, the expected page and plots out."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import pytest
from PIL import Image

from sftprep.transforms import stats as stats_lib
from sftprep.views import charts, report

# A run's merged raw stats, as the workers and writers count them (see transforms/stats.py).
RAW = {
    "read": {"a.jsonl": 60, "b.jsonl": 40},
    "rejected": {"a.jsonl": {"invalid_json": 3, "unknown_format": 1},
                 "b.jsonl": {"invalid_json": 2}},
    "dropped": {"b.jsonl": {"too_long": 4}},
    "duplicates": {"a.jsonl": 2},
    "written": {"train": {"a.jsonl": 50, "b.jsonl": 30}, "validation": {"a.jsonl": 4, "b.jsonl": 4}},
    "tokens": {"train": {"total": 9000, "trainable": 6000},
               "validation": {"total": 800, "trainable": 500}},
    "lengths": {"train": {"20": 10, "64": 30, "100": 25, "512": 15},
                "validation": {"30": 3, "90": 5}},
    "trainable_lengths": {"train": {"5": 20, "40": 40, "300": 20},
                          "validation": {"10": 4, "60": 4}},
    "truncated": {"completion_truncated": 6, "prompt_truncated": 9},
    "rows_truncated": 15,
    "rows_truncated_by_source": {"a.jsonl": 11, "b.jsonl": 4},
}
SAMPLES = {
    "invalid_json": [{"source": "a.jsonl", "line": 7, "detail": "Expecting value",
                      "raw": "<script>alert(1)</script>"}],
    "too_long": [{"source": "b.jsonl", "line": 3, "detail": "700 tokens > 512", "raw": "{}"}],
}


@pytest.fixture(scope="module")
def summary():
    return stats_lib.summarize(RAW)


@pytest.fixture(scope="module")
def rendered(summary):
    return report.render_report(summary, SAMPLES)


def test_summary_has_the_trainable_length_histogram(summary):
    assert summary["trainable_length_histogram"] == {
        "train": {"5": 20, "40": 40, "300": 20}, "validation": {"10": 4, "60": 4}}
    assert summary["accounting"]["holds"]


def test_truncated_rows_by_source(summary):
    assert {s: e["truncated"] for s, e in summary["per_source"].items()} == {
        "a.jsonl": 11, "b.jsonl": 4}
    assert sum(e["truncated"] for e in summary["per_source"].values()) == summary["rows_truncated"]
    assert stats_lib.summarize({"read": {"c.jsonl": 3}})["per_source"]["c.jsonl"]["truncated"] == 0


def test_merge_of_partials_with_truncation_by_source_is_associative():
    parts = [{"read": {"a.jsonl": 2}, "rows_truncated": 1,
              "rows_truncated_by_source": {"a.jsonl": 1}},
             {"rows_truncated_by_source": {"a.jsonl": 3, "b.jsonl": 1}},
             {"read": {"b.jsonl": 5}, "rows_truncated_by_source": {"b.jsonl": 2}}, {}]
    copies = json.loads(json.dumps(parts))
    expected = {"read": {"a.jsonl": 2, "b.jsonl": 5}, "rows_truncated": 1,
                "rows_truncated_by_source": {"a.jsonl": 4, "b.jsonl": 3}}
    merge = stats_lib.merge
    assert merge(parts) == expected
    assert merge([merge(parts[:2]), merge(parts[2:])]) == expected
    assert merge([parts[0], merge([parts[1], merge(parts[2:])])]) == expected
    assert merge(reversed(parts)) == expected
    assert parts == copies  # the partials themselves are left as they were


def test_a_failed_run_says_so_at_the_top(summary):
    why = "2 of 3 records rejected or dropped (66.7% > --max-rejected-fraction 0.1) <see>"
    page = report.render_report(summary, SAMPLES, failure=why)["report.html"].decode("utf-8")
    banner = re.search(r'<section class="failed">(.*?)</section>', page, flags=re.S)[1]
    assert "This run failed its final checks" in banner
    assert "no <code>manifest.json</code>" in banner
    assert html.escape(why) in banner and "<see>" not in page
    assert page.index('class="failed"') < page.index("<h2>Length distribution</h2>")
    assert 'class="failed"' not in report.render_report(summary, SAMPLES)["report.html"].decode()


def test_report_files(rendered):
    assert sorted(rendered) == ["report.html", "report/lengths.png", "report/outcomes.png",
                                "report/tokens.png", "report/trained_lengths.png"]
    page = rendered["report.html"].decode("utf-8")
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    assert [alt for _, alt in embedded] == [title for _, title in report.PLOTS]
    for (name, _), (data, _) in zip(report.PLOTS, embedded):
        assert base64.b64decode(data) == rendered[f"report/{name}"]
        image = Image.open(io.BytesIO(rendered[f"report/{name}"]))
        assert image.format == "PNG" and image.width == charts.WIDTH * charts.SCALE


def colors_in(png: bytes):
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {color for _, color in image.getcolors(maxcolors=1 << 20)}


def rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def test_plots_draw_each_series(rendered):
    splits = {rgb(report.SPLIT_COLORS["train"]), rgb(report.SPLIT_COLORS["validation"])}
    assert splits <= colors_in(rendered["report/lengths.png"])
    assert splits <= colors_in(rendered["report/trained_lengths.png"])
    assert {rgb(report.TRAINED), rgb(report.UNTRAINED)} <= colors_in(rendered["report/tokens.png"])
    assert {rgb(c) for c in report.OUTCOME_COLORS.values()} <= \
        colors_in(rendered["report/outcomes.png"])


def test_page_counts(rendered):
    page = rendered["report.html"].decode("utf-8")
    kpis = dict(re.findall(r'<div class="label">([^<]+)</div><div class="value">([^<]+)</div>',
                           page))
    assert kpis == {"Records read": "100", "Rows written": "88", "Rejected": "6", "Dropped": "4",
                    "Duplicates": "2", "Truncated rows": "15", "Tokens": "9,800"}
    reasons = re.findall(r'<span class="tag"[^>]*>(\w+)</span></td><td><code>([^<]+)</code></td>'
                         r'<td class="n">([\d,]+)</td><td class="n">([^<]+)</td>', page)
    assert reasons == [("rejected", "invalid_json", "5", "5.0%"),
                       ("rejected", "unknown_format", "1", "1.0%"),
                       ("dropped", "too_long", "4", "4.0%"),
                       ("duplicate", "same example_id", "2", "2.0%"),
                       ("truncated", "prompt_truncated", "9", "9.0%"),
                       ("truncated", "completion_truncated", "6", "6.0%")]
    heads = re.search(r"<h2>By source file</h2>\n<table><thead><tr>(.*?)</tr>", page)[1]
    assert re.findall(r">([a-z]+)</th>", heads) == [
        "source", "read", "written", "rejected", "dropped", "duplicates", "truncated", "reasons"]
    sources = re.findall(r'<tr><td><code>([^<]+)</code></td>((?:<td class="n">[\d,]+</td>){6})',
                         page)
    assert [(s, re.findall(r">([\d,]+)<", cells)) for s, cells in sources] == [
        ("a.jsonl", ["60", "54", "4", "0", "2", "11"]),
        ("b.jsonl", ["40", "34", "2", "4", "0", "4"])]
    assert "<code>invalid_json</code> 2" in page  # b.jsonl's reasons
    assert "✓ accounting holds" in page
    quantiles = re.findall(r"<tr><td>(train|validation)</td><td>([a-z ]+)</td>"
                           r'<td class="n">([\d,.]+)</td><td class="n">([\d,.]+)</td>', page)
    assert quantiles[0] == ("train", "tokens", "20", "64")  # min, p50 of the train lengths


def test_rejection_examples_are_escaped(rendered):
    page = rendered["report.html"].decode("utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<code>a.jsonl:7</code>" in page and "700 tokens &gt; 512" in page
    headings = re.findall(r'<h3><code>(\w+)</code> <span class="muted">([\d,]+) records?</span>',
                          page)
    assert headings == [("invalid_json", "5"), ("too_long", "4"), ("duplicate", "2"),
                        ("unknown_format", "1")]
    assert page.count("No rows of this reason were found") == 2  # duplicate, unknown_format


def test_report_is_deterministic_and_standalone(summary, rendered):
    assert report.render_report(summary, SAMPLES) == rendered
    page = rendered["report.html"].decode("utf-8")
    for external in ("<script", "<link", "href=", "http://", "https://", "@import", "url("):
        assert external not in page
    assert re.findall(r'src="([a-z]+):', page) == ["data"] * len(report.PLOTS)


def test_empty_run_still_renders():
    files = report.render_report(stats_lib.summarize({}), {})
    page = files["report.html"].decode("utf-8")
    assert "No rows were written." in page and "Nothing was rejected." in page
    for name, _ in report.PLOTS:
        assert Image.open(io.BytesIO(files[f"report/{name}"])).format == "PNG"


def test_collect_samples_reads_only_what_it_needs():
    rows = [{"source": "a", "line": i, "reason": "invalid_json" if i % 2 else "too_long",
             "detail": "d" * 1000, "raw": "x" * 5000} for i in range(1, 50)]
    consumed = []

    def lines():
        for row in rows:
            consumed.append(row["line"])
            yield json.dumps(row)

    samples = report.collect_samples(lines(), ["too_long", "invalid_json"], per_reason=2)
    assert [r["line"] for r in samples["invalid_json"]] == [1, 3]
    assert [r["line"] for r in samples["too_long"]] == [2, 4]
    assert consumed == [1, 2, 3, 4]  # stops reading once both reasons are complete
    assert samples["too_long"][0]["raw"].startswith("x" * report.RAW_CHARS + " … [4,600 more")
    assert len(samples["too_long"][0]["detail"]) < report.DETAIL_CHARS + 40


def test_sample_reasons_order():
    assert report.sample_reasons({"rejected_by_reason": {"b": 2, "a": 2, "c": 1},
                                  "dropped_by_reason": {"too_long": 9}, "duplicates": 2},
                                 limit=4) == ["too_long", "a", "b", "duplicate"]



def test_packing_is_listed_train_first_then_the_other_splits_by_name(summary):
    """The packing table and the pack-length plot order splits as every other table does."""
    numbers = {"pack_length": 256, "packs": 5, "examples": 8, "examples_per_pack": 1.6,
               "efficiency": 0.990625, "pack_length_histogram": {"244": 1, "256": 4},
               "pack_length_quantiles": {"min": 244, "p50": 256}}
    packing = {"validation": numbers, "extra": numbers, "train": {**numbers, "packs": 20}}
    files = report.render_report({**summary, "packing": packing}, {})
    page = files["report.html"].decode("utf-8")
    assert re.findall(r'<tr><td>(\w+)</td><td class="n">256</td><td class="n">(\d+)</td>',
                      page) == [("train", "20"), ("extra", "5"), ("validation", "5")]
    assert Image.open(io.BytesIO(files[f"report/{report.PACK_PLOT[0]}"])).format == "PNG"

"""A real run writes report.html and its plots; Debian's headless Chromium shows the page with
no console errors, nothing fetched, every plot decoded, and takes a screenshot of it.

Set SFTPREP_SCREENSHOT_DIR to keep the screenshots (report.png, inspect.png) there.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil

import pytest
from PIL import Image

from sftprep.views import charts, report
from tests.conftest import DATA
from tests.views.chromium import Page, find_chromium

BAD_LINES = ['{"instruction": "unterminated', '{"foo": 1}', '[1, 2]',
             '{"messages": [{"role": "user", "content": "a question and no answer"}]}']


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """One run over real files with rejections, a duplicate, truncation and two splits, into
    a directory that holds the report of an earlier run (which must not survive)."""
    from sftprep.pipeline.run import main

    base = tmp_path_factory.mktemp("report_run")
    lines = (DATA / "alpaca_en_demo.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    mixed = lines[:10] + BAD_LINES[:2] + lines[10:40] + BAD_LINES[2:] + lines[40:] + [lines[3]]
    source = base / "mixed.jsonl"
    source.write_text("\n".join(mixed) + "\n", encoding="utf-8")
    out = base / "out"
    (out / "report").mkdir(parents=True)
    for stale in ("manifest.json", "report.html", "report/lengths.png",
                  "report/plot_of_an_older_version.png"):
        (out / stale).write_text("from an earlier run")
    from sftprep.pipeline import ownership  # an earlier run's marker: its output is sftprep's

    (out / ownership.MARKER).write_bytes(ownership.marker_bytes(ownership.DATASET_ENTRIES))
    code = main(["--input", str(source), "--input", str(DATA / "seed_examples.jsonl"),
                 "--output", str(out), "--validation-fraction", "0.2", "--max-length", "160",
                 "--max-rejected-fraction", "0.5"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    pytest.importorskip("websockets.sync.client", reason="the DevTools client needs websockets")
    with Page(binary, str(tmp_path_factory.mktemp("chromium-profile"))) as page:
        yield page


def test_run_writes_the_report_before_the_manifest(run_output):
    stats = json.loads((run_output / "stats.json").read_text())
    assert stats["records_read"] == 75 and stats["rejected"] == 4 and stats["duplicates"] == 1
    assert stats["rows_truncated"] > 0 and set(stats["rows_by_split"]) == {"train", "validation"}
    names = sorted(p.name for p in (run_output / "report").iterdir())
    assert names == sorted(name for name, _ in report.PLOTS)  # the stale plot is gone
    page = (run_output / "report.html").read_text(encoding="utf-8")
    assert "from an earlier run" not in page
    assert f'<div class="value">{stats["records_read"]}</div>' in page
    for reason, count in stats["rejected_by_reason"].items():
        assert f'<code>{reason}</code></td><td class="n">{count}</td>' in page
    # the rejection examples come from rejected/, escaped
    assert re.search(r"<code>[^<]*mixed\.jsonl:\d+</code>", page)
    assert "{&quot;foo&quot;: 1}" in page
    for name, _ in report.PLOTS:
        image = Image.open(run_output / "report" / name)
        assert image.format == "PNG" and image.width == charts.WIDTH * charts.SCALE
    manifest = run_output / "manifest.json"
    assert (run_output / "report.html").stat().st_mtime_ns <= manifest.stat().st_mtime_ns


def test_truncated_rows_by_source_match_the_written_rows(run_output):
    import pyarrow.parquet as pq

    rows = [row for path in sorted(run_output.glob("*/*.parquet"))
            for row in pq.read_table(path, columns=["source", "truncated"]).to_pylist()]
    stats = json.loads((run_output / "stats.json").read_text())
    expected = {source: sum(1 for r in rows if r["source"] == source and r["truncated"])
                for source in stats["per_source"]}
    assert {s: e["truncated"] for s, e in stats["per_source"].items()} == expected
    assert sum(expected.values()) == stats["rows_truncated"] > 0
    page = (run_output / "report.html").read_text(encoding="utf-8")
    cells = dict(re.findall(r'<tr><td><code>([^<]+)</code></td>((?:<td class="n">[\d,]+</td>){6})',
                            page))
    assert {s: int(re.findall(r">([\d,]+)<", c)[-1]) for s, c in cells.items()} == expected


def test_report_in_headless_chromium(run_output, browser, tmp_path):
    browser.open((run_output / "report.html").as_uri())
    assert browser.problems() == []
    urls = browser.requested_urls()
    assert urls[0] == (run_output / "report.html").as_uri()
    assert all(u.startswith("data:image/png;base64,") for u in urls[1:])  # nothing fetched
    images = browser.evaluate(
        "[...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,"
        " shown: Math.round(i.getBoundingClientRect().width)}))")
    assert [i["alt"] for i in images] == [title for _, title in report.PLOTS]
    for image in images:
        assert image["complete"] and image["w"] == charts.WIDTH * charts.SCALE
        assert image["shown"] > 600
    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert headings == ["Length distribution", "Rejections, drops and truncation",
                        "By source file", "Rejection examples"]
    shot = browser.screenshot(width=1000)
    assert browser.evaluate("document.documentElement.scrollWidth") <= 1000  # no sideways scroll
    _check_screenshot(shot, tmp_path / "report.png", "report.png")


def test_inspect_page_in_headless_chromium(browser, tmp_path):
    from sftprep.views.inspect_cli import main as inspect_main

    page = tmp_path / "inspect.html"
    assert inspect_main(["--input", str(DATA / "seed_examples.jsonl"), "--index", "2",
                         "--index", "3", "--html", str(page)]) == 0
    browser.open(page.as_uri())
    assert browser.problems() == []
    assert browser.requested_urls() == [page.as_uri()]
    styles = browser.evaluate(
        "[...document.querySelectorAll('pre.tokens span[title]')].map(s => "
        "[s.className, getComputedStyle(s).backgroundColor])")
    trained = {color for cls, color in styles if cls.startswith("t")}
    untrained = {color for cls, color in styles if cls.startswith("u")}
    assert len(trained) == 2 and len(untrained) == 2 and not trained & untrained
    assert browser.evaluate("document.querySelectorAll('section.card').length") == 2
    _check_screenshot(browser.screenshot(width=1000), tmp_path / "inspect.png", "inspect.png")


def _check_screenshot(data: bytes, path: pathlib.Path, name: str) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.width == 1000 and image.height > 300
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # not a blank page
    path.write_bytes(data)
    keep = os.environ.get("SFTPREP_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(path, os.path.join(keep, name))

"""The human report of a run: `report.html` and its plots as `report/*.png`, from stats.json.

`render_report` is pure (the stats document and a few rejected rows in, file name -> bytes
out); the pipeline's finish step writes the files next to stats.json, before the manifest.
The page is standalone: inline CSS, the plots inline as base64 PNG, no scripts, nothing
fetched, so it works opened from disk or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from sftprep.transforms.records import DUPLICATE_REASON
from sftprep.views import charts

REPORT_HTML = "report.html"
REPORT_DIR = "report"
PLOTS = (
    ("lengths.png", "Tokens per example"),
    ("trained_lengths.png", "Trained tokens per example"),
    ("tokens.png", "Trained and untrained tokens by split"),
    ("outcomes.png", "Records not written as read, by reason"),
)
PACK_PLOT = ("packs.png", "Tokens per pack")  # only for a --pack-length run
SAMPLE_REASONS = 5  # reasons with example rows in the report (the most frequent ones)
SAMPLES_PER_REASON = 3
RAW_CHARS = 400
DETAIL_CHARS = 300

SPLIT_COLORS = {"train": "#4c78a8", "validation": "#f58518"}
TRAINED, UNTRAINED = "#54a24b", "#c9ced6"
OUTCOME_COLORS = {"rejected": "#e45756", "dropped": "#b279a2", "duplicate": "#9d755d",
                  "truncated": "#e6b422"}

Samples = Dict[str, List[Dict[str, Any]]]  # reason -> rejected rows as written in rejected/


def sample_reasons(stats: Dict[str, Any], limit: int = SAMPLE_REASONS) -> List[str]:
    """The reasons worth example rows: the most frequent among rejected, dropped, duplicates.

    >>> sample_reasons({"rejected_by_reason": {"invalid_json": 2}, "dropped_by_reason":
    ...                 {"too_long": 5}, "duplicates": 1})
    ['too_long', 'invalid_json', 'duplicate']
    """
    counts = {**stats.get("rejected_by_reason", {}), **stats.get("dropped_by_reason", {})}
    if stats.get("duplicates"):
        counts[DUPLICATE_REASON] = stats["duplicates"]
    return [r for r, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


def collect_samples(lines: Iterable[str], reasons: Sequence[str],
                    per_reason: int = SAMPLES_PER_REASON) -> Samples:
    """The first rows of each wanted reason from rejected/*.jsonl lines; stops reading as soon
    as every reason has its rows. Long `raw` and `detail` values are cut here already."""
    wanted = set(reasons)
    out: Samples = {}
    if not wanted:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        reason = row.get("reason") if isinstance(row, dict) else None
        if reason not in wanted:
            continue
        raw = row.get("raw")
        out.setdefault(reason, []).append({
            "source": str(row.get("source", "")), "line": row.get("line", 0),
            "detail": _cut(str(row.get("detail") or ""), DETAIL_CHARS),
            "raw": None if raw is None else _cut(str(raw), RAW_CHARS)})
        if len(out[reason]) >= per_reason:
            wanted.discard(reason)
            if not wanted:
                break
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit:,} more characters]"


def render_report(stats: Dict[str, Any], samples: Samples, failure: str = "") -> Dict[str, bytes]:
    """{relative path: bytes}: `report.html` and every plot as `report/NAME.png`; `failure`, why
    the run failed its final checks, heads the page when given."""
    plots = dict(_plots(stats))
    files = {f"{REPORT_DIR}/{name}": data for name, data in plots.items()}
    files[REPORT_HTML] = _page(stats, samples, plots, failure).encode("utf-8")
    return files


# --- plots ---------------------------------------------------------------------------------

def _split_order(split: str) -> Tuple[bool, str]:
    """Sort key of split names: train first, then the others by name."""
    return split != "train", split


def _splits(stats: Dict[str, Any]) -> List[str]:
    names = set(stats.get("rows_by_split", {})) | set(stats.get("length_histogram", {}))
    return sorted(names, key=_split_order)


def _series(split: str, counts: Dict[str, Any]) -> charts.Series:
    """A split's histogram as a chart series (stats.json's keys are strings)."""
    return split, SPLIT_COLORS.get(split, "#72b7b2"), {int(k): int(v) for k, v in counts.items()}


def _plots(stats: Dict[str, Any]) -> List[Tuple[str, bytes]]:
    splits = _splits(stats)
    share = len([s for s in splits if stats.get("rows_by_split", {}).get(s)]) > 1
    y_label = "% of the split's rows" if share else "rows"
    out = []
    for (name, title), key in zip(PLOTS[:2], ("length_histogram", "trainable_length_histogram")):
        series = [_series(split, stats.get(key, {}).get(split, {})) for split in splits]
        unit = "tokens" if key == "length_histogram" else "trained tokens"
        out.append((name, charts.histogram_png(title, series, f"{unit} per example", y_label,
                                               share=share)))
    token_rows, token_labels = [], []
    for split in splits:
        tokens = stats.get("tokens", {}).get(split, {})
        total, trained = int(tokens.get("total", 0)), int(tokens.get("trainable", 0))
        if total:
            token_rows.append((split, [("trained", trained, TRAINED),
                                       ("untrained", total - trained, UNTRAINED)]))
            token_labels.append(f"{charts.number(total)} tokens, {trained / total:.0%} trained")
    out.append((PLOTS[2][0], charts.bars_png(
        PLOTS[2][1], token_rows, legend=[("trained", TRAINED), ("untrained", UNTRAINED)],
        subtitle="trained: labels equal input_ids · untrained: -100 (prompt, system, framing)",
        empty_message="No rows written", value_labels=token_labels)))
    outcome_rows = [(f"{outcome}: {reason}", [(outcome, count, OUTCOME_COLORS[outcome])])
                    for outcome, reason, count in _outcomes(stats)]
    out.append((PLOTS[3][0], charts.bars_png(
        PLOTS[3][1], outcome_rows,
        legend=[(o, c) for o, c in OUTCOME_COLORS.items()
                if any(row[1][0][0] == o for row in outcome_rows)],
        subtitle="rejected: unusable input · dropped: no fit or nothing to train · "
                 "truncated: written shortened",
        empty_message="Every record was written whole")))
    if stats.get("packing"):
        series = [_series(split, stats["packing"][split]["pack_length_histogram"])
                  for split in sorted(stats["packing"], key=_split_order)]
        out.append((PACK_PLOT[0], charts.histogram_png(PACK_PLOT[1], series, "tokens per pack",
                                                       "packs", share=False)))
    return out


def _outcomes(stats: Dict[str, Any]) -> List[Tuple[str, str, int]]:
    """(outcome, reason, count), outcomes in pipeline order, reasons by count."""
    out: List[Tuple[str, str, int]] = []
    for outcome, key in (("rejected", "rejected_by_reason"), ("dropped", "dropped_by_reason"),
                         ("truncated", "truncated_by_reason")):
        reasons = stats.get(key, {})
        out += [(outcome, r, int(n)) for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])) if n]
        if outcome == "dropped" and stats.get("duplicates"):
            out.append(("duplicate", "same example_id", int(stats["duplicates"])))
    return out


# --- page ----------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f7fa; color: #1f2933;
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 940px; margin: 0 auto; padding: 28px 24px 56px; }
header h1 { font-size: 24px; margin: 0; letter-spacing: -.01em; }
header p { margin: 4px 0 0; color: #52606d; }
h2 { font-size: 17px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid #e4e7eb; }
h3 { font-size: 14px; margin: 18px 0 8px; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px;
        margin: 22px 0 0; }
.kpi { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; padding: 12px 14px; }
.kpi .label { font-size: 12px; color: #616e7c; text-transform: uppercase; letter-spacing: .04em; }
.kpi .value { font-size: 22px; font-weight: 600; margin-top: 2px; font-variant-numeric: tabular-nums; }
.kpi .note { font-size: 12px; color: #616e7c; }
.kpi.bad .value { color: #c62828; }
.ok { color: #2f855a; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
figure { margin: 0 0 16px; background: #fff; border: 1px solid #e4e7eb; border-radius: 8px;
         padding: 6px; }
figure img { display: block; width: 100%; height: auto; }
figcaption { font-size: 12px; color: #616e7c; padding: 2px 8px 4px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #e4e7eb;
        border-radius: 8px; overflow: hidden; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 7px 12px; border-bottom: 1px solid #eef1f4; vertical-align: top; }
th { background: #f8f9fb; font-size: 12px; color: #52606d; font-weight: 600; }
td.n, th.n { text-align: right; white-space: nowrap; }
tr:last-child td { border-bottom: none; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.sample { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; margin: 0 0 10px; }
.sample .where { padding: 8px 12px; border-bottom: 1px solid #eef1f4; font-size: 13px; }
.sample .detail { color: #52606d; }
.sample pre { margin: 0; padding: 10px 12px; white-space: pre-wrap; word-break: break-all;
              color: #323f4b; background: #fbfcfd; border-radius: 0 0 8px 8px; }
.tag { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; color: #fff; }
.muted { color: #616e7c; }
.failed { margin: 22px 0 0; padding: 12px 14px; border: 1px solid #f5b4b4;
          border-left: 4px solid #c62828; border-radius: 8px; background: #fdecec; color: #7f1d1d; }
.failed .why { display: block; margin-top: 4px; }
footer { margin-top: 40px; font-size: 12px; color: #7b8794; }
"""


def _page(stats: Dict[str, Any], samples: Samples, plots: Dict[str, bytes],
          failure: str = "") -> str:
    banner = [_failure(failure)] if failure else []
    body = "\n".join([_header(stats), *banner, _lengths(stats, plots),
                      *([_packing(stats, plots)] if stats.get("packing") else []),
                      _outcome_section(stats, plots), _mixture(stats), _sources(stats),
                      _samples_section(stats, samples),
                      '<footer>Written by sftprep after the run, next to stats.json; the plots '
                      'are also saved as report/*.png.</footer>'])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>sftprep run report</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _esc(value: Any) -> str:
    return html.escape(str(value))


_n = charts.number


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _kpi(label: str, value: str, note: str = "", bad: bool = False) -> str:
    note_html = f'<div class="note">{note}</div>' if note else ""
    return (f'<div class="kpi{" bad" if bad else ""}"><div class="label">{label}</div>'
            f'<div class="value">{value}</div>{note_html}</div>')


def _header(stats: Dict[str, Any]) -> str:
    read = stats.get("records_read", 0)
    by_split = stats.get("rows_by_split", {})
    split_note = " · ".join(f"{_esc(s)} {_n(n)}" for s, n in sorted(by_split.items()))
    holds = stats.get("accounting", {}).get("holds")
    accounting = ('<span class="ok">✓ accounting holds</span>' if holds else
                  '<span class="fail">✗ accounting violated</span>')
    sources = len(stats.get("per_source", {}))
    tokens = stats.get("tokens", {})
    total = sum(int(t.get("total", 0)) for t in tokens.values())
    trained = sum(int(t.get("trainable", 0)) for t in tokens.values())
    unused = stats.get("rejected", 0) + stats.get("dropped", 0)
    kpis = [
        _kpi("Records read", _n(read), f"from {sources} file{'s' if sources != 1 else ''}"),
        _kpi("Rows written", _n(stats.get("rows_written", 0)), split_note),
        _kpi("Rejected", _n(stats.get("rejected", 0)), _pct(stats.get("rejected", 0), read) +
             " of read", bad=bool(stats.get("rejected"))),
        _kpi("Dropped", _n(stats.get("dropped", 0)), _pct(stats.get("dropped", 0), read) +
             " of read", bad=bool(stats.get("dropped"))),
        _kpi("Duplicates", _n(stats.get("duplicates", 0)), "written once"),
        _kpi("Truncated rows", _n(stats.get("rows_truncated", 0)),
             _pct(stats.get("rows_truncated", 0), stats.get("rows_written", 0)) + " of rows"),
        _kpi("Tokens", _n(total), f"{_n(trained)} trained ({_pct(trained, total)})"),
    ]
    return (f'<header><h1>sftprep run report</h1><p>{_n(read)} records read; '
            f'{_n(stats.get("rows_written", 0))} rows written; {_n(unused)} not used. '
            f'{accounting}: read = written + rejected + dropped + duplicates'
            f'{_mixture_terms(stats)}.</p></header>\n'
            f'<section class="kpis">{"".join(kpis)}</section>')


def _mixture_terms(stats: Dict[str, Any]) -> str:
    """The invariant's mixture terms, in runs that repeat or sample out examples."""
    repeats, sampled = stats.get("repeats", 0), stats.get("sampled_out", 0)
    if not (repeats or sampled):
        return ""
    return (f' + sampled out, written counting each example once ({_n(repeats)} repeats '
            f'beyond that, {_n(sampled)} sampled out)')


def _failure(message: str) -> str:
    """The banner of a run that failed its final checks: it has no manifest and is not published."""
    return ('<section class="failed"><strong>This run failed its final checks</strong> and was not '
            'marked complete: no <code>manifest.json</code>, no <code>LATEST</code>. '
            f'<span class="why">{_esc(message)}</span></section>')


def _figure(plots: Dict[str, bytes], name: str, caption: str) -> str:
    data = base64.b64encode(plots[name]).decode("ascii")
    title = dict(PLOTS + (PACK_PLOT,))[name]
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(title)}" '
            f'width="{charts.WIDTH}"><figcaption>{caption} '
            f'(<code>report/{name}</code>)</figcaption></figure>')


def _lengths(stats: Dict[str, Any], plots: Dict[str, bytes]) -> str:
    rows = []
    for split in _splits(stats):
        for label, key in (("tokens", "length_quantiles"), ("trained tokens",
                                                            "trainable_length_quantiles")):
            q = stats.get(key, {}).get(split, {})
            if not q:
                continue
            cells = "".join(f'<td class="n">{_n(q.get(k, 0))}</td>'
                            for k in ("min", "p50", "p90", "p95", "p99", "max", "mean"))
            rows.append(f"<tr><td>{_esc(split)}</td><td>{label}</td>{cells}</tr>")
    heads = "".join(f'<th class="n">{k}</th>' for k in ("min", "p50", "p90", "p95", "p99", "max",
                                                        "mean"))
    table = (f"<table><thead><tr><th>split</th><th>per example</th>{heads}</tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>" if rows else
             '<p class="muted">No rows were written.</p>')
    return ("<h2>Length distribution</h2>\n"
            + _figure(plots, "lengths.png", "Tokens per written example, by split.") + "\n"
            + _figure(plots, "trained_lengths.png",
                      "Trained tokens (labels not -100) per written example, by split.") + "\n"
            + _figure(plots, "tokens.png", "Token totals: what the loss sees and what it does not.")
            + f"\n<h3>Quantiles</h3>\n{table}")


def _packing(stats: Dict[str, Any], plots: Dict[str, bytes]) -> str:
    """Packed output: efficiency = real tokens / (packs x pack length), per split."""
    rows = []
    for split in sorted(stats["packing"], key=_split_order):
        numbers = stats["packing"][split]
        q = numbers.get("pack_length_quantiles", {})
        rows.append(f"<tr><td>{_esc(split)}</td><td class=\"n\">{_n(numbers['pack_length'])}</td>"
                    f"<td class=\"n\">{_n(numbers['packs'])}</td>"
                    f"<td class=\"n\">{_n(numbers['examples'])}</td>"
                    f"<td class=\"n\">{numbers['examples_per_pack']:.2f}</td>"
                    f"<td class=\"n\">{100 * numbers['efficiency']:.2f}%</td>"
                    f"<td class=\"n\">{_n(q.get('p50', 0))}</td>"
                    f"<td class=\"n\">{_n(q.get('min', 0))}</td></tr>")
    heads = "".join(f'<th class="n">{h}</th>' for h in (
        "pack length", "packs", "examples", "examples / pack", "efficiency", "p50 tokens",
        "min tokens"))
    return ("<h2>Packing</h2>\n<p>Rows hold whole examples end to end; efficiency is real "
            "tokens / (packs &times; pack length).</p>\n"
            f"<table><thead><tr><th>split</th>{heads}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>\n" + _figure(plots, PACK_PLOT[0], "Tokens per pack, by split."))


def _outcome_section(stats: Dict[str, Any], plots: Dict[str, bytes]) -> str:
    read = stats.get("records_read", 0)
    rows = [f'<tr><td><span class="tag" style="background:{OUTCOME_COLORS[o]}">{o}</span></td>'
            f'<td><code>{_esc(r)}</code></td><td class="n">{_n(n)}</td>'
            f'<td class="n">{_pct(n, read)}</td></tr>' for o, r, n in _outcomes(stats)]
    table = ('<table><thead><tr><th>outcome</th><th>reason</th><th class="n">records</th>'
             f'<th class="n">of read</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
             if rows else '<p class="muted">No record was rejected, dropped, duplicated or '
                          'truncated.</p>')
    return ("<h2>Rejections, drops and truncation</h2>\n"
            + _figure(plots, "outcomes.png", "Every record not written exactly as read.")
            + f"\n{table}")


def _sources(stats: Dict[str, Any]) -> str:
    rows = []
    for source, entry in sorted(stats.get("per_source", {}).items()):
        rejected, dropped = entry.get("rejected", {}), entry.get("dropped", {})
        reasons = ", ".join(f"<code>{_esc(r)}</code> {_n(n)}" for r, n in sorted(
            {**rejected, **dropped}.items(), key=lambda kv: (-kv[1], kv[0])))
        rows.append(f'<tr><td><code>{_esc(source)}</code></td>'
                    f'<td class="n">{_n(entry.get("read", 0))}</td>'
                    f'<td class="n">{_n(entry.get("written", 0))}</td>'
                    f'<td class="n">{_n(sum(rejected.values()))}</td>'
                    f'<td class="n">{_n(sum(dropped.values()))}</td>'
                    f'<td class="n">{_n(entry.get("duplicates", 0))}</td>'
                    f'<td class="n">{_n(entry.get("truncated", 0))}</td>'
                    f'<td>{reasons or "<span class=muted>–</span>"}</td></tr>')
    return ('<h2>By source file</h2>\n<table><thead><tr><th>source</th><th class="n">read</th>'
            '<th class="n">written</th><th class="n">rejected</th><th class="n">dropped</th>'
            '<th class="n">duplicates</th><th class="n">truncated</th><th>reasons</th></tr>'
            '</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _mixture(stats: Dict[str, Any]) -> str:
    """The mixture table: per source, what was asked and what the output got (stats.json's
    `mixture`); "" for runs without `sources:`."""
    mixture = stats.get("mixture")
    if not mixture:
        return ""
    rows = []
    for name, entry in mixture.get("sources", {}).items():
        asked = entry.get("requested", {})
        request = (f'share {asked["share"]:.1%}' if "share" in asked
                   else f'weight {asked.get("weight", 1.0):g}')
        rows.append(f'<tr><td><code>{_esc(name)}</code></td><td>{_esc(request)}</td>'
                    f'<td class="n">{entry.get("achieved_share_rows", 0):.2%}</td>'
                    f'<td class="n">{entry.get("achieved_share_trained_tokens", 0):.2%}</td>'
                    f'<td class="n">{_n(entry.get("read", 0))}</td>'
                    f'<td class="n">{_n(entry.get("written", 0))}</td>'
                    f'<td class="n">{_n(entry.get("repeats", 0))}</td>'
                    f'<td class="n">{_n(entry.get("sampled_out", 0))}</td>'
                    f'<td class="n">{_n(entry.get("duplicates", 0))}</td></tr>')
    unit = mixture.get("mix_by") or "rows"
    total = mixture.get("total")
    note = (f"Shares are measured in {_esc(unit.replace('_', ' '))}"
            + (f", total {_n(int(total))}" if total else "")
            + ". Written counts every copy; repeats are the copies beyond the first.")
    return ('<h2>Mixture</h2>\n<p class="muted">' + note + '</p>\n<table><thead><tr>'
            '<th>source</th><th>requested</th><th class="n">share of rows</th>'
            '<th class="n">share of trained tokens</th><th class="n">read</th>'
            '<th class="n">written</th><th class="n">repeats</th><th class="n">sampled out</th>'
            '<th class="n">duplicates</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _samples_section(stats: Dict[str, Any], samples: Samples) -> str:
    reasons = sample_reasons(stats)
    if not reasons:
        return "<h2>Rejection examples</h2>\n<p class=\"muted\">Nothing was rejected.</p>"
    counts = {**stats.get("rejected_by_reason", {}), **stats.get("dropped_by_reason", {}),
              DUPLICATE_REASON: stats.get("duplicates", 0)}
    parts = ["<h2>Rejection examples</h2>",
             f'<p class="muted">The first {SAMPLES_PER_REASON} rows of the most frequent '
             "reasons, from <code>rejected/</code> (raw records cut to "
             f"{RAW_CHARS} characters).</p>"]
    for reason in reasons:
        count = counts.get(reason, 0)
        parts.append(f"<h3><code>{_esc(reason)}</code> <span class=\"muted\">"
                     f"{_n(count)} record{'' if count == 1 else 's'}</span></h3>")
        rows = samples.get(reason, [])
        if not rows:
            parts.append('<p class="muted">No rows of this reason were found in rejected/.</p>')
        for row in rows:
            raw = row.get("raw")
            raw_html = _esc(raw) if raw is not None else \
                "(no raw text: the row it duplicates was written)"
            parts.append(f'<div class="sample"><div class="where"><code>{_esc(row["source"])}:'
                         f'{_esc(row["line"])}</code> <span class="detail">'
                         f'{_esc(row.get("detail", ""))}</span></div>'
                         f'<pre>{raw_html}</pre></div>')
    return "\n".join(parts)

"""The scaling curve: sftprep's records/s and memory against records, from harness JSON files.

    python3 -m bench.scaling_plot bench/round2_*.json --out bench/scaling.png

Every `sftprep run` row of the given files (`python3 -m bench.harness --json ...`) is a point;
where a size was measured more than once, the median records/s and the largest peak are drawn.
Two panels over a log-scaled records axis: records/s, and peak memory (PSS summed over the
process tree, solid; RSS summed, dashed, which counts pages shared by forked children once per
child).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
from typing import Dict, List, Tuple

from PIL import Image, ImageDraw, ImageFont

METHOD = "sftprep run"
COLORS = {"pc": (31, 119, 180), "chat": (214, 39, 40)}
LABELS = {"pc": "prompt/completion", "chat": "multi-turn chat"}
WIDTH, PANEL, MARGIN = 1200, 420, 90
BAR_MIB = 4096  # issue 18: peak memory stays under 4 GiB at 10M records


def points(paths: List[pathlib.Path]) -> Dict[str, List[Tuple[int, float, float, float]]]:
    """corpus -> [(records, median records/s, peak PSS MiB, peak RSS MiB)], by records."""
    seen: Dict[Tuple[str, int], List[dict]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            if row["method"] == METHOD:
                seen.setdefault((row["corpus"], row["size"]), []).append(row)
    out: Dict[str, List[Tuple[int, float, float, float]]] = {}
    for (corpus, size), rows in sorted(seen.items()):
        out.setdefault(corpus, []).append((
            size, statistics.median(r["records_per_s"] for r in rows),
            max(r.get("peak_pss_mib", 0.0) for r in rows), max(r["peak_rss_mib"] for r in rows)))
    return out


def draw(series: Dict[str, List[Tuple[int, float, float, float]]], out: pathlib.Path) -> None:
    image = Image.new("RGB", (WIDTH, 2 * PANEL + 60), "white")
    canvas = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    sizes = sorted({p[0] for pts in series.values() for p in pts})
    low, high = math.log10(sizes[0]), math.log10(sizes[-1])

    def x_of(records: int) -> float:
        span = (high - low) or 1.0
        return MARGIN + (math.log10(records) - low) / span * (WIDTH - 2 * MARGIN)

    panels = [("records/s (whole process, start to exit)", 1, None),
              ("peak memory of the process tree, MiB (PSS solid, RSS dashed)", 2, 3)]
    for index, (title, field, dashed) in enumerate(panels):
        top = 30 + index * PANEL
        bottom = top + PANEL - 70
        values = [p[f] for pts in series.values() for p in pts for f in (field, dashed) if f]
        if dashed:  # the memory panel shows the bar
            values.append(BAR_MIB)
        peak = max(values) * 1.1 or 1.0

        def y_of(value: float) -> float:
            return bottom - value / peak * (bottom - top)

        canvas.text((MARGIN, top - 24), title, fill="black", font=font)
        canvas.line([(MARGIN, bottom), (WIDTH - MARGIN, bottom)], fill="black")
        canvas.line([(MARGIN, top), (MARGIN, bottom)], fill="black")
        for step in range(5):
            value = peak * step / 4
            canvas.text((8, y_of(value) - 8), f"{value:,.0f}", fill="gray", font=font)
            canvas.line([(MARGIN, y_of(value)), (WIDTH - MARGIN, y_of(value))], fill=(230, 230, 230))
        for size in sizes:
            canvas.text((x_of(size) - 24, bottom + 6), f"{size:,}", fill="gray", font=font)
        if dashed:
            canvas.line([(MARGIN, y_of(BAR_MIB)), (WIDTH - MARGIN, y_of(BAR_MIB))], fill="black")
            canvas.text((MARGIN + 8, y_of(BAR_MIB) - 20), "4 GiB", fill="black", font=font)
        for corpus, pts in series.items():
            color = COLORS.get(corpus, (0, 0, 0))
            for f, dash in ((field, False), (dashed, True)):
                if not f:
                    continue
                xy = [(x_of(p[0]), y_of(p[f])) for p in pts]
                for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
                    pieces = 12 if dash else 1
                    for k in range(0, pieces, 2 if dash else 1):
                        a, b = k / pieces, (k + 1) / pieces
                        canvas.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                                     (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=color, width=3)
                for x, y in xy:
                    canvas.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        if index == 0:
            for k, corpus in enumerate(series):
                canvas.text((WIDTH - MARGIN - 260, bottom - 60 + 22 * k), LABELS.get(corpus, corpus),
                            fill=COLORS.get(corpus, (0, 0, 0)), font=font)
    canvas.text((WIDTH // 2 - 40, 2 * PANEL + 30), "records (log scale)", fill="black", font=font)
    image.save(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scaling_plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/scaling.png"))
    args = parser.parse_args(argv)
    series = points(args.results)
    if not series:
        parser.error(f"no {METHOD!r} rows in {', '.join(map(str, args.results))}")
    draw(series, args.out)
    for corpus, pts in series.items():
        for size, rate, pss, rss in pts:
            print(f"{corpus} {size:>10,} {rate:>10,.0f} records/s  PSS {pss:,.0f} MiB  "
                  f"RSS {rss:,.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run statistics as plain nested dicts of counts: partials are summed, then summarized once.

A partial looks like {"read": {source: n}, "rejected": {source: {reason: n}}, ...}; every leaf is
an int, so merging is a recursive sum and independent of the order partials arrive in.
Truncated rows are counted per source file under TRUNCATED_BY_SOURCE, by the shard writers.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional

from sftprep.transforms.mix import source_name

Stats = Dict[str, Any]
QUANTILES = (0.5, 0.9, 0.95, 0.99)
TRUNCATED_BY_SOURCE = "rows_truncated_by_source"  # {source: rows written truncated}


def merge(parts: Iterable[Stats]) -> Stats:
    """The sum of stats partials (a new dict; the partials are left as they are)."""
    total: Stats = {}
    for part in parts:
        _add_into(total, part)
    return total


def _add_into(total: Stats, part: Stats) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def bump(stats: Stats, *path: str, by: int = 1) -> None:
    """Add `by` to the count at `path`, creating the nested dicts on the way."""
    node = stats
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = node.get(path[-1], 0) + by


def _sum_leaves(node: Any) -> int:
    if isinstance(node, dict):
        return sum(_sum_leaves(v) for v in node.values())
    return int(node)


def quantiles(histogram: Dict[Any, int]) -> Dict[str, int]:
    """Exact quantiles of a {value: count} histogram (keys may be strings after JSON)."""
    items: List = sorted((int(k), v) for k, v in histogram.items())
    total = sum(v for _, v in items)
    if not total:
        return {}
    out, seen, index = {}, 0, 0
    for q in QUANTILES:
        rank = max(1, int(-(-q * total // 1)))  # ceil(q * total)
        while seen + items[index][1] < rank:
            seen += items[index][1]
            index += 1
        out[f"p{int(q * 100)}"] = items[index][0]
    out["min"], out["max"] = items[0][0], items[-1][0]
    out["mean"] = round(sum(k * v for k, v in items) / total, 2)
    return out


def packing(raw: Stats) -> Stats:
    """Per split, the packing of a --pack-length run ({} without): packs, their real tokens,
    efficiency = real tokens / (packs x N), examples per pack, and the histograms of pack
    lengths and of examples per pack.

    >>> packing({"packing": {"train": {"packs": 2, "examples": 5, "tokens": 15, "capacity": 16}},
    ...          "pack_lengths": {"train": {"7": 1, "8": 1}}})["train"]["efficiency"]
    0.9375
    """
    out: Stats = {}
    for split, totals in sorted(raw.get("packing", {}).items()):
        packs, capacity = totals.get("packs", 0), totals.get("capacity", 0)
        lengths = raw.get("pack_lengths", {}).get(split, {})
        examples = raw.get("pack_examples", {}).get(split, {})
        out[split] = {
            "pack_length": capacity // packs if packs else 0,
            "packs": packs,
            "examples": totals.get("examples", 0),
            "tokens": totals.get("tokens", 0),
            "efficiency": round(totals.get("tokens", 0) / capacity, 6) if capacity else 0.0,
            "examples_per_pack": round(totals.get("examples", 0) / packs, 4) if packs else 0.0,
            "pack_length_quantiles": quantiles(lengths),
            "pack_length_histogram": {str(k): v for k, v in
                                      sorted(lengths.items(), key=lambda kv: int(kv[0]))},
            "examples_per_pack_histogram": {str(k): v for k, v in
                                            sorted(examples.items(), key=lambda kv: int(kv[0]))},
        }
    return out


def summarize(raw: Stats, mixture: Optional[Dict[str, Any]] = None) -> Stats:
    """The stats.json document: totals, the accounting check, and per-source detail (rows
    count examples, packed or not; `packing` describes the packs of a --pack-length run).

    With a mixture (`mixture`: the run config's, as in the manifest), rows_written counts every
    copy; repeats (copies beyond the first) and sampled_out (examples a weight or share left
    out) enter the invariant, and `mixture` reports each source's request and what it got."""
    read = _sum_leaves(raw.get("read", {}))
    written = {split: _sum_leaves(v) for split, v in raw.get("written", {}).items()}
    rejected = _sum_leaves(raw.get("rejected", {}))
    dropped = _sum_leaves(raw.get("dropped", {}))
    duplicates = _sum_leaves(raw.get("duplicates", {}))
    split = _sum_leaves(raw.get("split_examples", {}))  # --rewritten-turns split: extra examples
    rows = sum(written.values())
    repeats = _sum_leaves(raw.get("repeats", {}))
    sampled_out = _sum_leaves(raw.get("sampled_out", {}))
    sources = sorted(set(raw.get("read", {})))
    summary = {
        "records_read": read,
        "rows_written": rows,
        "rows_by_split": written,
        "rejected": rejected,
        "dropped": dropped,
        "duplicates": duplicates,
        "split_examples": split,
        "rewritten_turns": dict(sorted(raw.get("rewritten_turns", {}).items())),
        "repeats": repeats,
        "sampled_out": sampled_out,
        "rows_written_unique": rows - repeats,
        "accounting": {
            "invariant": "records_read + split_examples == rows_written_unique + rejected + "
                         "dropped + duplicates + sampled_out (rows_written_unique = "
                         "rows_written - repeats)",
            "holds": read + split == rows - repeats + rejected + dropped + duplicates
            + sampled_out,
        },
        "rejected_by_reason": _by_reason(raw.get("rejected", {})),
        "dropped_by_reason": _by_reason(raw.get("dropped", {})),
        "truncated_by_reason": dict(sorted(raw.get("truncated", {}).items())),
        "rows_truncated": raw.get("rows_truncated", 0),
        "tokens": raw.get("tokens", {}),
        **({"packing": packing(raw)} if raw.get("packing") else {}),
        "length_quantiles": {split: quantiles(h) for split, h in raw.get("lengths", {}).items()},
        "trainable_length_quantiles": {split: quantiles(h)
                                       for split, h in raw.get("trainable_lengths", {}).items()},
        "length_histogram": {split: {str(k): v for k, v in sorted(h.items(), key=lambda kv: int(kv[0]))}
                             for split, h in raw.get("lengths", {}).items()},
        "trainable_length_histogram": {
            split: {str(k): v for k, v in sorted(h.items(), key=lambda kv: int(kv[0]))}
            for split, h in raw.get("trainable_lengths", {}).items()},
        "per_source": {
            source: {
                "read": raw.get("read", {}).get(source, 0),
                "written": raw.get("written", {}).get("train", {}).get(source, 0)
                + raw.get("written", {}).get("validation", {}).get(source, 0),
                "rejected": dict(sorted(raw.get("rejected", {}).get(source, {}).items())),
                "dropped": dict(sorted(raw.get("dropped", {}).get(source, {}).items())),
                "duplicates": raw.get("duplicates", {}).get(source, 0),
                "truncated": raw.get(TRUNCATED_BY_SOURCE, {}).get(source, 0),
                "repeats": raw.get("repeats", {}).get(source, 0),
                "sampled_out": raw.get("sampled_out", {}).get(source, 0),
            }
            for source in sources
        },
    }
    if mixture:
        summary["mixture"] = mixture_summary(raw, summary["per_source"], mixture)
    return summary


def mixture_summary(raw: Stats, per_source: Dict[str, Stats], mixture: Dict[str, Any]) -> Stats:
    """Per mixture source: what was asked (share or weight), what it got (share of rows and of
    trained tokens written, counting every copy), and its rows read, written, repeated, sampled
    out. Sources are `NAME/FILE` in per_source; here by NAME."""
    rows, tokens = raw.get("mix_rows", {}), raw.get("mix_trained_tokens", {})
    all_rows, all_tokens = _sum_leaves(rows), _sum_leaves(tokens)
    out: Stats = {"mix_by": mixture.get("mix_by", "rows"), "total": mixture.get("total"),
                  "max_repeat": mixture.get("max_repeat"), "sources": {}}
    for source in mixture.get("sources", []):
        name = source["name"]
        files = [v for tag, v in per_source.items() if source_name(tag) == name]
        counted = {key: sum(f[key] for f in files)
                   for key in ("read", "written", "duplicates", "repeats", "sampled_out")}
        out["sources"][name] = {
            "requested": {"share": source["share"]} if "share" in source
            else {"weight": source.get("weight", 1.0)},
            "achieved_share_rows": round(rows.get(name, 0) / all_rows, 6) if all_rows else 0.0,
            "achieved_share_trained_tokens": round(tokens.get(name, 0) / all_tokens, 6)
            if all_tokens else 0.0,
            "rows": rows.get(name, 0),
            "trained_tokens": tokens.get(name, 0),
            **counted,
        }
    return out


def to_json(summary: Stats) -> bytes:
    """stats.json's bytes: keys sorted at every level, numeric keys (histogram buckets) in
    numeric order, so `"9"` comes before `"10"` and the bytes never depend on merge order.

    >>> to_json({"b": {"10": 1, "9": 2}, "a": 0}).decode().split()
    ['{', '"a":', '0,', '"b":', '{', '"9":', '2,', '"10":', '1', '}', '}']
    """
    return (json.dumps(_ordered(summary), indent=2) + "\n").encode("utf-8")


def _ordered(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    keys = list(node)
    numeric = all(isinstance(k, int) or (isinstance(k, str) and k.lstrip("-").isdigit())
                  for k in keys)
    order = sorted(keys, key=int) if numeric and keys else sorted(keys, key=str)
    return {str(k): _ordered(node[k]) for k in order}


def _by_reason(by_source: Dict[str, Dict[str, int]]) -> Dict[str, int]:
    return dict(sorted(merge(by_source.values()).items()))

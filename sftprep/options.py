"""Every option of `sftprep run` and `sftprep train`, declared once.

An `Option` holds the flag, the type, the default, the help and the config-file key. From these
declarations come argparse (`add_arguments`), the checks of `--config` file values
(`file_value`), the command-line reference in docs/cli.md (`reference_markdown`) and the Flex
Template parameters in deploy/dataflow/metadata.json (`flex_template_metadata`); tests check
that the committed files are current.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sftprep.errors import ConfigError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "a mapping", type(None): "null"}


def parse_bool(text: str) -> bool:
    """`--flag` alone is true; `--flag=false` (as Flex Templates pass values) is false."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: `name` is the config key and the field it fills (`max_length`), `flag` the
    command-line spelling (`--max-length`; `--max_length` is accepted too)."""

    name: str
    type: type  # bool, int, float, str; `list` for repeatable strings, `dict` for KEY=VALUE pairs
    default: Any
    help: str
    flag: str = ""
    choices: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    group: str = "run"  # the docs section
    dataflow: bool = True  # a Flex Template parameter
    check: Optional[Callable[[Any], bool]] = None  # the value is valid
    check_message: str = ""

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return self.name

    def describe_default(self) -> str:
        if self.default in (None, (), [], {}, ""):
            return ""
        if self.type is bool:
            return "on" if self.default else "off"
        return str(self.default)


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option],
                  dest: Callable[[Option], str] = lambda o: o.name) -> None:
    """The options as argparse arguments with default None, so a config file fills the rest."""
    groups: Dict[str, Any] = {}
    for option in options:
        group = groups.setdefault(option.group, parser.add_argument_group(option.group))
        flags = [option.cli_flag]
        if "-" in option.cli_flag[2:]:
            flags.append("--" + option.cli_flag[2:].replace("-", "_"))
        kwargs: Dict[str, Any] = {"dest": dest(option), "help": _help(option)}
        if option.type is bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif option.type in (list, dict):
            kwargs.update(action="append", metavar=option.metavar or "VALUE")
        else:
            kwargs.update(type=option.type, metavar=option.metavar)
            if option.choices:
                kwargs["choices"] = option.choices
        group.add_argument(*flags, **kwargs)


def _help(option: Option) -> str:
    default = option.describe_default()
    return f"{option.help} (default: {default})" if default else option.help


def file_value(option: Option, key: str, value: Any) -> Any:
    """A --config value checked against the option's type; `key` as the file spells it."""
    expected = option.type
    if expected is list:
        if isinstance(value, str) or (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            return value
        raise type_error(key, "a string or a list of strings", value)
    if expected is dict:
        return value  # KEY=VALUE pairs: the option's own parser checks them
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is expected:  # not isinstance: YAML's true is not the integer 1 here
        return value
    raise type_error(key, _TYPE_NAMES[expected], value)


def type_error(key: str, expected: str, value: Any) -> ConfigError:
    got = _KINDS.get(type(value), type(value).__name__)
    return ConfigError(f"--config: {key} must be {expected}, got {value!r} ({got})")


def validate(options: Sequence[Option], values: Dict[str, Any]) -> None:
    """Each option's own check, as one-line ConfigErrors."""
    for option in options:
        value = values.get(option.name, option.default)
        if option.choices and value is not None and value not in option.choices:
            raise ConfigError(f"{option.cli_flag} must be one of {', '.join(option.choices)}, "
                              f"got {value!r}")
        if option.check is not None and value is not None and not option.check(value):
            raise ConfigError(f"{option.cli_flag} {option.check_message}, got {value!r}")


def reference_markdown(options: Sequence[Option]) -> str:
    """A Markdown table per group: flag, config key, default, what it does."""
    out: List[str] = []
    for group in dict.fromkeys(o.group for o in options):
        out += [f"### {group}", "", "| flag | config key | default | what it does |",
                "|---|---|---|---|"]
        for option in (o for o in options if o.group == group):
            choices = f" One of: {', '.join(f'`{c}`' for c in option.choices)}." \
                if option.choices else ""
            default = option.describe_default()
            out.append(f"| `{option.cli_flag}` | `{option.key}` | "
                       f"{f'`{default}`' if default else ''} | {option.help}.{choices} |")
        out.append("")
    return "\n".join(out)


def flex_template_metadata(options: Sequence[Option], required: Sequence[str],
                           extra: Sequence[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
    """Flex Template parameters (Dataflow passes each as --name=value)."""
    params = []
    for option in options:
        if not option.dataflow:
            continue
        params.append({"name": option.name, "label": option.name.replace("_", " ").capitalize(),
                       "helpText": _help(option), "isOptional": option.name not in required})
    return params + list(extra)

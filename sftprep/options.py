"""Every option of `sftprep run`, `inspect` and `train`, declared once, as a dataclass field.

`option(default, help, ...)` declares a field of RunConfig, ExampleSettings or TrainConfig with
its flag, type, choices, check and help; `options_of(cls)` reads the declarations back. From
them come argparse (`add_arguments`), the checks of --config file values (`file_value`), the
checks of every value (`check_values`), and, in sftprep/reference.py, the command-line
reference in docs/cli.md and the Flex Template parameters in deploy/dataflow/metadata.json.
This module imports nothing of the project but its error types.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from sftprep.errors import ConfigError

REQUIRED: Any = dataclasses.MISSING
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "a mapping", type(None): "null"}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: `name` is the field it fills and its key in the manifest's config (`inputs`),
    `flag` its command-line spelling (`--input`; `--some_flag` is accepted for `--some-flag`).
    `type` is bool, int, float or str, or list for a repeatable option."""

    name: str
    type: type
    default: Any
    help: str
    flag: str = ""
    choices: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    check: Optional[Callable[[Any], bool]] = None
    message: str = ""  # what the check wants, after the flag; may use {value}
    default_text: str = ""  # the default as help and docs say it, when str(default) is not that
    from_file: Optional[Callable[[str, Any], Any]] = None  # reads a --config value, type-checked
    convert: Optional[Callable[[Any], Any]] = None  # the given value -> the field's (list: tuple)
    dataflow: bool = True  # a Flex Template parameter

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """The --config file key (the flag's name; the field's name is accepted too)."""
        return self.cli_flag[2:].replace("-", "_")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_default(self) -> str:
        if self.default_text or self.required:
            return self.default_text or "required"
        if self.default in (None, ()):
            return ""
        if self.type is bool:
            return "on" if self.default else "off"
        return str(self.default)

    def describe_help(self) -> str:
        default = "" if self.required else self.describe_default()
        return f"{self.help} (default: {default})" if default else self.help


def option(default: Any = REQUIRED, help: str = "", **spec: Any) -> Any:
    """A dataclass field declared as an option (see Option for `spec`). Its type is that of
    `default`, unless `type=` says otherwise: str for a None default, list for a tuple."""
    if "type" not in spec:
        spec["type"] = list if isinstance(default, tuple) else \
            str if default in (None, REQUIRED) else type(default)
    metadata = {"option": dict(spec, help=help)}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type) -> Any:
    """A field holding the options of the dataclass `cls` (its defaults by default)."""
    return dataclasses.field(default_factory=cls, metadata={"options_of": cls})


def options_of(cls: type) -> List[Option]:
    """The options `cls` declares, nested ones in place, in field order."""
    found: List[Option] = []
    for field in dataclasses.fields(cls):
        if "options_of" in field.metadata:
            found += options_of(field.metadata["options_of"])
        elif "option" in field.metadata:
            found.append(Option(name=field.name, default=field.default, **field.metadata["option"]))
    return found


def at_least(low: Any, note: str = "") -> Dict[str, Any]:
    """`check` and `message` of an option that must be at least `low`."""
    return {"check": lambda value: value >= low, "message": f"must be at least {low}{note}"}


def parse_bool(text: str) -> bool:
    """`--flag` alone is true; `--flag=false` (as Flex Templates pass values) is false."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one ConfigError line (argparse prints usage and exits), which
    takes no abbreviations: `--pub` is not `--publish`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise ConfigError(message)


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option],
                  title: Optional[str] = None) -> None:
    """The options as argparse arguments, each with default None (a --config file or the
    dataclass fills what the command line leaves out)."""
    target: Any = parser.add_argument_group(title) if title else parser
    for opt in options:
        flags = [opt.cli_flag]
        if "-" in opt.cli_flag[2:]:
            flags.append("--" + opt.cli_flag[2:].replace("-", "_"))
        kwargs: Dict[str, Any] = {"dest": opt.name, "help": opt.describe_help(), "default": None}
        if opt.type is bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif opt.type is list:
            kwargs.update(action="append", metavar=opt.metavar or "VALUE")
        else:
            # choices are checked by check_values, as those of a --config file are
            kwargs.update(type=opt.type, metavar=opt.metavar or "|".join(opt.choices) or None)
        target.add_argument(*flags, **kwargs)


def given(args: argparse.Namespace, options: Sequence[Option]) -> Dict[str, Any]:
    """The options the command line set (argparse leaves the others None)."""
    return {o.name: getattr(args, o.name) for o in options if getattr(args, o.name, None) is not None}


def field_values(options: Sequence[Option], values: Dict[str, Any]) -> Dict[str, Any]:
    """`values` (from a file or the command line) as the fields take them: each option's
    `convert`, and a tuple for a repeatable option."""
    out = dict(values)
    for opt in options:
        if opt.name in out:
            convert = opt.convert or (tuple if opt.type is list else None)
            if convert is not None:
                out[opt.name] = convert(out[opt.name])
    return out


def file_value(opt: Option, key: str, value: Any) -> Any:
    """A --config value checked against the option's type; `key` as the file spells it.
    Integers are accepted as numbers; a repeatable option also takes one string."""
    if opt.from_file is not None:
        return opt.from_file(key, value)
    if opt.type is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise type_error(key, "a string or a list of strings", value)
    if opt.type is float and type(value) is int:
        return float(value)
    if type(value) is opt.type:  # not isinstance: YAML's true is not the integer 1 here
        return value
    raise type_error(key, _TYPE_NAMES[opt.type], value)


def type_error(key: str, expected: str, value: Any) -> ConfigError:
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


def check_values(options: Sequence[Option], values: Dict[str, Any]) -> None:
    """Each option's own choices and check on `values` (option name -> value), as one-line
    ConfigErrors naming the flag."""
    for opt in options:
        value = values.get(opt.name)
        if value is None:
            continue
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"{opt.cli_flag} must be one of {', '.join(opt.choices)}"
                              + did_you_mean(str(value), opt.choices))
        if opt.check is not None and not opt.check(value):
            raise ConfigError(f"{opt.cli_flag} {opt.message.format(value=value)}")


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name closest to a mistyped one (`-` and `_` alike), or None when none is close.

    >>> closest("--max-lenght", ["--max-length", "--max_num_workers", "--seed"])
    '--max-length'
    """
    spellings: Dict[str, str] = {}
    for candidate in known:
        spellings.setdefault(candidate.lstrip("-").replace("-", "_"), candidate)
    match = difflib.get_close_matches(name.lstrip("-").split("=", 1)[0].replace("-", "_"),
                                      list(spellings), n=1, cutoff=0.75)
    return spellings[match[0]] if match else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean --x?" for the closest known name, or ""."""
    match = closest(name, known)
    return f"; did you mean {match}?" if match else ""


def flags_of(parser: argparse.ArgumentParser) -> List[str]:
    """Every --flag `parser` takes."""
    return [flag for action in parser._actions  # pylint: disable=protected-access
            for flag in action.option_strings if flag.startswith("--")]

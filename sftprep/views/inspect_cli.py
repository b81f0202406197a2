"""`sftprep inspect`: show a few examples as `sftprep run` would write them.

It takes the same options as `run` (a `run` command line, less its Beam options, works with
`run` replaced by `inspect`; an option it does not know is an error), loads the tokenizer and
template the way the launcher does, reads local input files with the pipeline's reader, and
hands the selected records to `prepare_batch`. Beam is never imported, so it starts in about a
second.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import traceback
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from sftprep.config import (
    ConfigError, RunConfig, add_run_arguments, build_config, read_config_file)
from sftprep.dataset import one_line
from sftprep.options import (
    Option, Parser, add_arguments, at_least, check_values, did_you_mean, flags_of)
from sftprep.views import inspect as view

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def _indices(items: Sequence[str]) -> List[int]:
    try:
        return [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"--index expects 0-based positions, got {' '.join(items)}") from None


INSPECT_OPTIONS = [
    Option("n", int, 5, "how many records to show: the first N, or N at random with --random",
           **at_least(1)),
    Option("index", list, (), "show the record at this 0-based position of the input; "
           "repeatable", metavar="I", convert=_indices),
    Option("example_ids", list, (), "show the record with this example_id (or a prefix of "
           "one); repeatable", flag="--id", metavar="EXAMPLE_ID"),
    Option("split", str, "train", "with --output OUT and no --input: the split --index counts in",
           choices=("train", "validation")),
    Option("random", bool, False, "pick --n records at random; --seed makes the pick "
           "reproducible"),
    Option("html", str, None, "write the view as a standalone HTML page", metavar="FILE"),
    Option("color", bool, None, "ANSI colors even when stdout is not a terminal (e.g. for "
           "less -R)", default_text="when stdout is a terminal"),
    Option("no_color", bool, None, "plain text, no ANSI colors"),
    Option("verbose", bool, False, "print the traceback of an error before its one-line "
           "message"),
]


def make_parser() -> Parser:
    parser = Parser(
        prog="sftprep inspect",
        description="Show examples exactly as `sftprep run` prepares them: token boundaries, "
                    "trained tokens highlighted, control tokens visible, one line of counts "
                    "each. Takes every option of `sftprep run` (those about output are ignored).",
        epilog="Without color: │ separates tokens, ⟦…⟧ wraps trained tokens, ⟨…⟩ a control "
               "token, ↵ marks a newline. Color is on when stdout is a terminal; --color and "
               "--no-color decide, else NO_COLOR (any non-empty value) turns it off and "
               "FORCE_COLOR (any non-empty value) on.")
    add_run_arguments(parser)
    add_arguments(parser, INSPECT_OPTIONS, title="inspect")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """inspect's command line; an option neither `run` nor `inspect` takes is an error."""
    parser = make_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}" + did_you_mean(unknown[0], flags_of(parser))
                          + " (inspect takes the options of sftprep run, not Beam's, and its own: "
                            "sftprep inspect --help lists them)")
    for opt in INSPECT_OPTIONS:
        value = getattr(args, opt.name)
        setattr(args, opt.name, opt.default if value is None else
                opt.convert(value) if opt.convert else value)
    check_values(INSPECT_OPTIONS, vars(args))
    if args.color and args.no_color:
        raise ConfigError("--color and --no-color exclude each other")
    return args


def load_config(args: argparse.Namespace) -> RunConfig:
    """The run config as `sftprep run` builds it (defaults < --config file < flags)."""
    file_values = read_config_file(args.config, _read_text) if args.config else None
    if not args.output and not (file_values or {}).get("output"):
        args.output = "-"  # inspect writes no dataset; RunConfig wants a value
    return build_config(args, file_values)


def expand_local_inputs(patterns: Sequence[str]) -> List[str]:
    """Local files named by --input (a file, a directory or a glob), sorted as `run` reads them."""
    paths = set()
    for pattern in patterns:
        if "://" in pattern:
            raise ConfigError(f"--input {pattern}: inspect reads local files only; copy a "
                              "file here first (e.g. gsutil cp)")
        if os.path.isdir(pattern):
            matched = [os.path.join(pattern, name) for name in os.listdir(pattern)
                       if name.endswith(INPUT_SUFFIXES)]
        else:
            matched = [p for p in glob.glob(pattern) if os.path.isfile(p)]
        matched = [p for p in matched if not os.path.basename(p).startswith(".")]
        if not matched:
            raise ConfigError(f"--input matched no files: {pattern}")
        paths.update(matched)
    return sorted(paths)


def iter_records(paths: Sequence[str], max_record_bytes: int,
                 tags: Optional[Dict[str, str]] = None) -> Iterator:
    """Every record of the files; `tags` (a mixture's): the `source` each file's records carry,
    NAME/FILE as `run` tags them, so each is read its source's way."""
    from sftprep.transforms.read import iter_raw_records

    for path in paths:
        with open(path, "rb") as stream:
            for record in iter_raw_records(path, stream, max_record_bytes):
                yield dataclasses.replace(record, source=tags[path]) if tags else record


def source_groups(config: RunConfig) -> List[Tuple[str, List[str], Optional[Dict[str, str]]]]:
    """(heading, files, their source tags) per source of a mixture; one unnamed group else."""
    if config.mixture is None:
        return [("", expand_local_inputs(config.inputs), None)]
    from sftprep.sources import source_names, source_tags
    from sftprep.transforms.mix import source_name

    tags = source_tags(config.mixture, expand_local_inputs, source_names)
    return [(source.name, sorted(p for p, t in tags.items() if source_name(t) == source.name),
             tags)
            for source in config.mixture.sources]


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def prepare_settings(config: RunConfig):
    """Tokenizer, template and settings resolved as the launcher resolves them (nothing saved)."""
    from sftprep.transforms.prepare import resolve_template_and_tokenizer
    from sftprep.tokenizer.runtime import TokenizerRuntime

    template, source, _, _ = resolve_template_and_tokenizer(config.tokenizer, config.template,
                                                            read_file=_read_text,
                                                            **config.template_options())
    settings = config.prepare_settings(template, total_input_bytes=0)
    return settings, TokenizerRuntime(source.backend(), template.bos)


def use_color(args: argparse.Namespace, environ=os.environ) -> bool:
    """--color or --no-color; else no color when NO_COLOR is set (not empty), color when
    FORCE_COLOR is; else color on a terminal."""
    if args.color is not None or args.no_color is not None:
        return bool(args.color) if args.color is not None else not args.no_color
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty()


def check_html_target(path: str) -> None:
    """Refuse, before any work, an --html that names a folder or lies in a missing folder."""
    if os.path.isdir(path):
        raise ConfigError(f"--html {path} is a folder; give a file name, e.g. --html "
                          f"{os.path.join(path, 'inspect.html')}")
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise ConfigError(f"--html {path}: the folder {folder} does not exist")


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.random and (args.index or args.example_ids):
        raise ConfigError("--random picks records itself; leave out --index and --id")
    if args.output and not args.inputs and not args.config:
        return _show_output(args)
    if args.html:
        check_html_target(args.html)
    config = load_config(args)
    groups = source_groups(config)
    paths = [p for _, group, _ in groups for p in group]
    settings, runtime = prepare_settings(config)
    shown, text = [], []
    for name, group, tags in groups:  # --n records of each source, under its name
        picked = view.select_records(iter_records(group, config.max_record_bytes, tags),
                                     settings, n=args.n, indices=args.index,
                                     ids=args.example_ids, sample=args.random,
                                     seed=config.example.seed)
        part = view.inspect_records(picked, settings, runtime)
        shown.extend(part)
        first = not text
        if name:
            text.append(f"== source {name} ({len(part)} shown) ==\n")
        text.append(view.format_terminal(part, use_color(args), legend=first))
    if args.html:
        settings_line = (f"template {config.template} · tokenizer {config.tokenizer} · "
                         f"--train-on {config.example.train_on} · --max-length "
                         f"{config.example.max_length} · --truncation {config.example.truncation}")
        page = view.format_html(shown, f"sftprep inspect: {', '.join(paths)}", settings_line)
        try:
            with open(args.html, "w", encoding="utf-8") as handle:
                handle.write(page)
        except OSError as err:
            raise ConfigError(f"--html {args.html}: cannot write it: "
                              f"{err.strerror or err}") from None
        print(f"sftprep inspect: wrote {len(shown)} records to {args.html}")
        return 0
    sys.stdout.write("".join(text))
    return 0


def _show_output(args: argparse.Namespace) -> int:
    """--output OUT --index I: rows of a finished run; a packed row example by example."""
    from sftprep.views import inspect_output

    if not args.index:
        raise ConfigError("--output OUT without --input shows rows of a finished run: give "
                          "--index I (0-based, repeatable)")
    sys.stdout.write(inspect_output.show(args.output, args.split, args.index, use_color(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ConfigError, ValueError) as err:
        if "--verbose" in args:
            traceback.print_exc()
        print(f"sftprep inspect: error: {one_line(str(err))}", file=sys.stderr)
        return 2

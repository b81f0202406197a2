"""`sftprep inspect`: show a few examples as `sftprep run` would write them.

It takes the same options as `run` (a `run` command line works with `run` replaced by
`inspect`), loads the tokenizer and template the way the launcher does, reads local input
files with the pipeline's reader, and hands the selected records to `prepare_batch`. Beam is
never imported, so it starts in about a second.
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
from sftprep.views import inspect as view

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftprep inspect",
        description="Show examples exactly as `sftprep run` prepares them: token boundaries, "
                    "trained tokens highlighted, control tokens visible, one line of counts "
                    "each. Takes every option of `sftprep run` (those about output are ignored).",
        epilog="Without color: │ separates tokens, ⟦…⟧ wraps trained tokens, ⟨…⟩ a control "
               "token, ↵ marks a newline. Color is off when stdout is not a terminal, when "
               "NO_COLOR is set, or with --no-color.")
    add_run_arguments(parser)
    group = parser.add_argument_group("inspect")
    group.add_argument("--n", type=int, default=5,
                       help="how many records to show: the first N, or N at random with "
                            "--random (default: 5)")
    group.add_argument("--index", type=int, action="append", default=[], metavar="I",
                       help="show the record at this 0-based position of the input; repeatable")
    group.add_argument("--id", action="append", default=[], dest="example_ids",
                       metavar="EXAMPLE_ID",
                       help="show the record with this example_id (or a prefix of one); "
                            "repeatable")
    group.add_argument("--split", choices=("train", "validation"), default="train",
                       help="with --output OUT and no --input: the split --index counts in "
                            "(default: train)")
    group.add_argument("--random", action="store_true",
                       help="pick --n records at random; --seed makes the pick reproducible")
    group.add_argument("--html", metavar="FILE", help="write the view as a standalone HTML page")
    color = group.add_mutually_exclusive_group()
    color.add_argument("--no-color", action="store_true", help="plain text, no ANSI colors")
    color.add_argument("--color", action="store_true",
                       help="ANSI colors even when stdout is not a terminal (e.g. for less -R)")
    return parser


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


def _relative(paths: List[str]) -> Dict[str, str]:
    """Paths relative to their deepest common folder (as `run` names sources)."""
    parts = [path.split("/") for path in paths]
    common = os.path.commonprefix([p[:-1] for p in parts]) if parts else []
    return {path: "/".join(p[len(common):]) for path, p in zip(paths, parts)}


def source_groups(config: RunConfig) -> List[Tuple[str, List[str], Optional[Dict[str, str]]]]:
    """(heading, files, their source tags) per source of a mixture; one unnamed group else."""
    if config.mixture is None:
        return [("", expand_local_inputs(config.inputs), None)]
    from sftprep.sources import source_tags

    tags = source_tags(config.mixture, expand_local_inputs, _relative)
    return [(source.name, sorted(p for p, t in tags.items()
                                 if t.split("/", 1)[0] == source.name), tags)
            for source in config.mixture.sources]


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def prepare_settings(config: RunConfig):
    """Tokenizer, template and settings resolved as the launcher resolves them (nothing saved)."""
    from sftprep.transforms.prepare import resolve_template_and_tokenizer
    from sftprep.transforms.tokenize import TokenizerRuntime

    template, source, _, _ = resolve_template_and_tokenizer(config.tokenizer, config.template,
                                                            read_file=_read_text,
                                                            **config.template_options())
    settings = config.prepare_settings(template, total_input_bytes=0)
    return settings, TokenizerRuntime(source.backend(), template.bos)


def use_color(args: argparse.Namespace) -> bool:
    if args.color:
        return True
    if args.no_color or os.environ.get("NO_COLOR"):
        return False
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
    args, ignored = make_parser().parse_known_args(list(argv))
    if ignored:
        print(f"sftprep inspect: ignoring options it does not use: {' '.join(ignored)}",
              file=sys.stderr)
    if args.n < 1:
        raise ConfigError("--n must be at least 1")
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
                                     ids=args.example_ids, sample=args.random, seed=config.seed)
        part = view.inspect_records(picked, settings, runtime)
        shown.extend(part)
        first = not text
        if name:
            text.append(f"== source {name} ({len(part)} shown) ==\n")
        text.append(view.format_terminal(part, use_color(args), legend=first))
    if args.html:
        settings_line = (f"template {config.template} · tokenizer {config.tokenizer} · "
                         f"--train-on {config.train_on} · --max-length {config.max_length} · "
                         f"--truncation {config.truncation}")
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

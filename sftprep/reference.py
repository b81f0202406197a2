"""The files written from the option declarations: the option tables of docs/cli.md and the
Flex Template parameters of deploy/dataflow/metadata.json.

`python -m sftprep.reference` rewrites both (`--check` only says whether they are current);
tests/test_reference.py fails when a committed file is not what this module writes.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Dict, List, Sequence

from sftprep.options import Option

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
FLEX_METADATA = ROOT / "deploy" / "dataflow" / "metadata.json"
BEGIN = "<!-- options: written by `python -m sftprep.reference` from the declarations; do not edit -->"
END = "<!-- end of the generated options -->"


def _commands() -> List[tuple]:
    from sftprep.config import RUN_FLAGS
    from sftprep.trainer.args import TRAIN_OPTIONS
    from sftprep.views.inspect_cli import INSPECT_OPTIONS

    return [
        ("sftprep run", "sftprep run --input GLOB [--input GLOB ...] --output DIR [options] "
                        "[Beam pipeline options]", RUN_FLAGS, True),
        ("sftprep inspect", "sftprep inspect --input FILE [options of run] [options below]",
         INSPECT_OPTIONS, False),
        ("sftprep train", "sftprep train --data DIR --output CKPT_DIR [options]", TRAIN_OPTIONS,
         False),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _table(options: Sequence[Option], with_key: bool) -> List[str]:
    head = "| option | config key | default | meaning |" if with_key else \
        "| option | default | meaning |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for opt in options:
        flag = f"`{opt.cli_flag}" + (f" {opt.metavar}`" if opt.metavar else "`")
        choices = f" One of: {', '.join(f'`{c}`' for c in opt.choices)}." if opt.choices else ""
        key = (" |" if opt.name == "config" else f" `{opt.key}` |") if with_key else ""
        lines.append(f"| {flag} |{key} {_cell(opt.describe_default())} | "
                     f"{_cell(opt.help)}.{choices} |")
    return lines


def reference_markdown() -> str:
    """The generated part of docs/cli.md: per command, its usage and a table of its options."""
    lines = [BEGIN, ""]
    for title, usage, options, with_key in _commands():
        lines += [f"### {title}", "", "```", usage, "```", ""] + _table(options, with_key) + [""]
    return "\n".join(lines + [END])


def cli_doc(current: str) -> str:
    """docs/cli.md with the text between the markers replaced by `reference_markdown()`."""
    start, end = current.index(BEGIN), current.index(END) + len(END)
    return current[:start] + reference_markdown() + current[end:]


def flex_template_metadata() -> Dict[str, Any]:
    """deploy/dataflow/metadata.json: every option a Dataflow job takes (as --name=value)."""
    from sftprep.config import CONFIG, RUN_OPTIONS

    parameters = []
    for opt in [o for o in RUN_OPTIONS if o.dataflow] + [CONFIG]:
        parameter = {"name": opt.key, "label": opt.key.replace("_", " ").capitalize(),
                     "helpText": opt.describe_help()[:1].upper() + opt.describe_help()[1:],
                     "isOptional": not opt.required}
        allowed = ("true", "false") if opt.type is bool else opt.choices
        if allowed:
            parameter["regexes"] = [f"^({'|'.join(allowed)})$"]
        parameters.append(parameter)
    return {"name": "sftprep",
            "description": "Prepare supervised fine-tuning data: JSONL in, tokenized and masked "
                           "Parquet shards out.",
            "parameters": parameters}


def generated_files() -> Dict[pathlib.Path, str]:
    """Each generated file and the text it must hold."""
    return {CLI_DOC: cli_doc(CLI_DOC.read_text(encoding="utf-8")),
            FLEX_METADATA: json.dumps(flex_template_metadata(), indent=2) + "\n"}


def main(argv: Sequence[str]) -> int:
    check = "--check" in argv
    stale = {p: t for p, t in generated_files().items() if p.read_text(encoding="utf-8") != t}
    for path, text in stale.items():
        if check:
            print(f"{path.relative_to(ROOT)} is not current: run python -m sftprep.reference")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

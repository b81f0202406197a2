"""The files written from the option declarations are current: docs/cli.md's option tables and
deploy/dataflow/metadata.json are what `python -m sftprep.reference` writes."""

from __future__ import annotations

import json

from sftprep import reference
from sftprep.config import RUN_OPTIONS
from sftprep.trainer.args import TRAIN_OPTIONS
from sftprep.views.inspect_cli import INSPECT_OPTIONS


def test_committed_files_are_what_the_declarations_write():
    for path, text in reference.generated_files().items():
        assert path.read_text(encoding="utf-8") == text, \
            f"{path.name} is not current: run python -m sftprep.reference"
    assert reference.main(["--check"]) == 0


def test_the_cli_reference_lists_every_option_once_with_its_default():
    doc = reference.CLI_DOC.read_text(encoding="utf-8")
    generated = doc[doc.index(reference.BEGIN):doc.index(reference.END)]
    rows = [line for line in generated.splitlines() if line.startswith("| `--")]
    flags = [row.split("`")[1].split()[0] for row in rows]
    assert flags == [o.cli_flag for o in RUN_OPTIONS[:2]] + ["--config"] + \
        [o.cli_flag for o in RUN_OPTIONS[2:]] + [o.cli_flag for o in INSPECT_OPTIONS] + \
        [o.cli_flag for o in TRAIN_OPTIONS]
    assert "| `--max-length` | `max_length` | 4096 | maximum tokens per example. |" in rows
    assert "| `--lr` | 0.0003 | peak learning rate. |" in rows
    # What the reference says is what argparse says: the same help and default.
    from sftprep.pipeline.run import make_parser

    [action] = [a for a in make_parser()._actions if "--max-length" in a.option_strings]
    assert action.help == "maximum tokens per example (default: 4096)"


def test_a_stale_file_is_reported_and_rewritten(tmp_path, monkeypatch, capsys):
    doc, metadata = tmp_path / "cli.md", tmp_path / "metadata.json"
    doc.write_text(f"# Command line\n\n{reference.BEGIN}\nold table\n{reference.END}\n\nprose\n")
    metadata.write_text("{}\n")
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    monkeypatch.setattr(reference, "CLI_DOC", doc)
    monkeypatch.setattr(reference, "FLEX_METADATA", metadata)
    assert reference.main(["--check"]) == 1
    assert capsys.readouterr().out == ("cli.md is not current: run python -m sftprep.reference\n"
                                       "metadata.json is not current: run python -m "
                                       "sftprep.reference\n")
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0
    text = doc.read_text()
    assert "old table" not in text and text.endswith(f"{reference.END}\n\nprose\n")
    assert "| `--max-length` | `max_length` | 4096 |" in text
    parameters = json.loads(metadata.read_text())["parameters"]
    assert {"name": "publish", "label": "Publish", "isOptional": True,
            "helpText": "Write into OUT/runs/<run_id>/ and point OUT/LATEST at it once complete "
                        "(default: off)",
            "regexes": ["^(true|false)$"]} in parameters
    assert [p["name"] for p in parameters if not p["isOptional"]] == ["input", "output"]

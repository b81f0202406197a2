"""The layout rule: transforms/ imports neither apache_beam nor torch; only trainer/ knows torch."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "sftprep"


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module.split(".")[0]


def test_transforms_are_free_of_beam_and_torch():
    files = list((ROOT / "transforms").glob("*.py"))
    assert len(files) >= 8
    for path in files:
        assert not {"apache_beam", "torch"} & set(imported_modules(path)), path


def test_only_pipeline_knows_beam():
    for path in ROOT.rglob("*.py"):
        if "apache_beam" in set(imported_modules(path)):
            assert path.parent.name == "pipeline", path

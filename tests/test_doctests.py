"""Every `>>>` example in sftprep's docstrings runs, as `pytest --doctest-modules sftprep` would."""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "sftprep"
MODULES = sorted(
    ".".join(("sftprep",) + path.relative_to(ROOT).with_suffix("").parts)
    for path in ROOT.rglob("*.py") if path.name != "__main__.py" and ">>>" in path.read_text())


def test_the_docstrings_have_examples():
    assert len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name.removesuffix(".__init__"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, result

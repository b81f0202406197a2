"""The layout rules of docs/architecture.md, with transitive imports: which package may import
whom, read from every import statement (function-level ones included) of every module, and
checked again in fresh interpreters for the entry points that must start without Beam."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from typing import Dict, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "sftprep"


def module_name(path: pathlib.Path) -> str:
    parts = ("sftprep",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> Set[str]:
    """Every module an import statement in the file names, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES: Dict[str, Set[str]] = {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def closure(name: str) -> Set[str]:
    """Modules `name` reaches: its own imports, and those of every sftprep module they reach."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        for target in MODULES.get(current, ()):
            if target not in seen:
                seen.add(target)
                if target in MODULES:
                    todo.append(target)
    return seen


def top_levels(names: Set[str]) -> Set[str]:
    return {n.split(".")[0] for n in names}


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# package -> third-party top-level modules and sftprep packages it must never reach
RULES = {
    "sftprep.transforms": ({"apache_beam", "torch"},
                           {"sftprep.pipeline", "sftprep.trainer", "sftprep.views"}),
    "sftprep.tokenizer": ({"apache_beam", "torch"}, {"sftprep.pipeline", "sftprep.trainer",
                                                     "sftprep.views", "sftprep.transforms"}),
    "sftprep.trainer": ({"apache_beam"}, {"sftprep.pipeline", "sftprep.views"}),
    "sftprep.views": ({"apache_beam", "torch"}, {"sftprep.pipeline", "sftprep.trainer"}),
    "sftprep.ecosystem": ({"apache_beam", "torch"}, {"sftprep.pipeline", "sftprep.trainer"}),
    "sftprep.dataset": ({"apache_beam", "torch"}, {"sftprep.pipeline", "sftprep.trainer",
                                                   "sftprep.transforms"}),
    "sftprep.storage": ({"apache_beam", "torch"}, {"sftprep.pipeline", "sftprep.trainer",
                                                   "sftprep.transforms"}),
    "sftprep.pipeline": ({"torch"}, {"sftprep.trainer"}),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_packages_reach_only_what_they_may(package):
    forbidden_modules, forbidden_packages = RULES[package]
    members = [name for name in MODULES if in_package(name, package)]
    assert members, package
    for name in members:
        reached = closure(name)
        assert not forbidden_modules & top_levels(reached), (name, forbidden_modules)
        bad = {r for r in reached for p in forbidden_packages if in_package(r, p)}
        assert not bad, (name, sorted(bad))


def test_errors_imports_nothing_of_the_project():
    assert not {n for n in MODULES["sftprep.errors"] if in_package(n, "sftprep")}


def test_only_pipeline_imports_beam_directly():
    for name, imported in MODULES.items():
        if "apache_beam" in top_levels(imported):
            assert in_package(name, "sftprep.pipeline"), name


@pytest.mark.parametrize("module", ["sftprep.trainer.loop", "sftprep.trainer.cli",
                                    "sftprep.ecosystem", "sftprep.views.inspect_cli",
                                    "sftprep.dataset", "sftprep.storage"])
def test_entry_points_start_without_beam(module):
    code = f"import {module}, sys; assert 'apache_beam' not in sys.modules, '{module}'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

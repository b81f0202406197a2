"""The `sftprep inspect` sessions shown in the docs are what the command prints today: every
fenced block of README.md and docs/*.md that starts with `$ sftprep inspect` is run, from the
repository root, and its output compared line for line."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest

from sftprep.views import inspect_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
SESSION = re.compile(r"^```\n\$ (sftprep inspect [^\n]*)\n(.*?)^```", re.S | re.M)


def _sessions():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command, output in SESSION.findall(path.read_text(encoding="utf-8")):
            yield pytest.param(command, output, id=f"{path.name}:{command[len('sftprep '):]}")


SESSIONS = list(_sessions())


def test_the_docs_show_inspect_sessions():
    names = {param.id.split(":")[0] for param in SESSIONS}
    assert {"inspect.md", "truncation.md"} <= names
    assert len(SESSIONS) >= 5


@pytest.mark.parametrize("command,output", SESSIONS)
def test_a_documented_inspect_session_prints_what_the_docs_show(command, output, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(ROOT)
    assert inspect_cli.main(shlex.split(command)[2:]) == 0
    assert capsys.readouterr().out == output

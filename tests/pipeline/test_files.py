"""pipeline/files.py on local paths, without Beam, does what Beam's FileSystems did for them:
the same glob matches (the same paths, relative ones kept relative), joins, reads, writes and
deletes. Beam's own functions are the reference."""

from __future__ import annotations

import re

import pytest
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from sftprep import storage
from sftprep.pipeline import files

NAMES = ("a.jsonl", "b.json", "ab.jsonl", "a?.jsonl", "[x].jsonl", "d/c.jsonl", "d/e/f.jsonl",
         "d/e/g.json", "d2/h.jsonl", ".hidden.jsonl", "a\\b.jsonl")
PATTERNS = ("*.jsonl", "*.json*", "a?.jsonl", "?.json", "[ab]*.jsonl", "[!a]*.jsonl",
            "[]x].jsonl", "[^a]*", "[x*.jsonl", "**.jsonl", "d/**", "d*/*.jsonl", "d/", "d",
            "**/f.jsonl", "a.jsonl", "missing.jsonl", "nothing-*.jsonl", "d/e/*.json",
            "*", "**")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    for name in NAMES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def beam_match(pattern: str):
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_local_globs_match_what_beam_matches(tree, pattern):
    for form in (str(tree / pattern), "./" + pattern, pattern):
        assert files.match(form) == beam_match(form), form


@pytest.mark.parametrize("pattern", PATTERNS + ("gs://b/d/*.jsonl", "a\\*", "x+y(z).jsonl",
                                                 "[!]].txt", "[a-c]?"))
def test_glob_regex_is_beams_translation(pattern):
    assert storage.glob_regex(pattern).pattern == \
        re.sub(r"^\(\?ms\)|\\Z$", "", FileSystem.translate_pattern(pattern))
    assert storage.glob_regex(pattern).flags & re.DOTALL


def test_joins_reads_writes_and_deletes_as_beam(tmp_path):
    base = str(tmp_path / "out")
    assert files.join(base, "train", "x.parquet") == FileSystems.join(base, "train", "x.parquet")
    assert files.join("gs://b/out", "x") == FileSystems.join("gs://b/out", "x")
    path = files.join(base, "a", "b", "c.bin")
    files.write_bytes(path, b"data")  # parent folders created, as Beam's create does
    assert files.read_bytes(path) == b"data" and files.read_text(path) == "data"
    assert files.exists(path) and not files.exists(path + ".no")
    with pytest.raises(FileNotFoundError):  # what Beam's local open raises
        files.read_bytes(path + ".no")
    files.delete([path])
    assert not files.exists(path) and files.exists(files.join(base, "a", "b"))
    files.delete_tree(files.join(base, "a"))
    assert not files.exists(files.join(base, "a"))
    files.delete_tree(files.join(base, "a"))  # nothing there: no error

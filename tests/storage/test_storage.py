"""sftprep.storage: local disk and gs:// (gcp-storage-emulator on 127.0.0.1) behave alike."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftprep import storage
from sftprep.errors import StorageError



@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    emulator = request.getfixturevalue("gcs")
    from tests.gcs_emulator import BUCKET

    del emulator
    return f"gs://{BUCKET}/storage-test/{tmp_path.name}"


def test_write_read_exists_and_delete(root):
    path = storage.join(root, "a", "b.txt")
    assert not storage.exists(path)
    storage.write_bytes(path, "héllo".encode())
    assert storage.exists(path) and storage.is_file(path)
    assert storage.read_text(path) == "héllo"
    storage.replace_bytes(path, b"second")
    assert storage.read_bytes(path) == b"second"
    storage.delete(storage.join(root, "a"))
    assert not storage.exists(path)
    storage.delete(storage.join(root, "a"))  # nothing there: no error


def test_globs_stop_at_slash_and_double_star_crosses(root):
    for name in ("x.jsonl", "y.json", "d/z.jsonl", "d/e/w.jsonl"):
        storage.write_bytes(storage.join(root, *name.split("/")), b"{}\n")
    assert storage.match(storage.join(root, "*.jsonl")) == [storage.join(root, "x.jsonl")]
    assert storage.match(storage.join(root, "d", "*.jsonl")) == [storage.join(root, "d", "z.jsonl")]
    assert storage.match(root + "/**.jsonl") == sorted(
        storage.join(root, *n.split("/")) for n in ("d/e/w.jsonl", "d/z.jsonl", "x.jsonl"))
    assert storage.match(storage.join(root, "y.json")) == [storage.join(root, "y.json")]
    assert storage.match(storage.join(root, "nothing-*.jsonl")) == []
    assert storage.list_files(storage.join(root, "d")) == [storage.join(root, "d", "z.jsonl")]


def test_parquet_reads_through_open_read(root):
    path = storage.join(root, "t.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"input_ids": [[1, 2], [3]]}), sink)
    storage.write_bytes(path, sink.getvalue().to_pybytes())
    with storage.open_read(path) as handle:
        assert pq.ParquetFile(handle).read().column("input_ids").to_pylist() == [[1, 2], [3]]


def test_missing_files_are_one_line_storage_errors(root):
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(storage.join(root, "missing.json"))
    assert "missing.json" in str(caught.value) and "\n" not in str(caught.value)


def test_relative_local_globs_stay_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.jsonl").write_text("{}\n")
    assert storage.match("data/*.jsonl") == ["data/a.jsonl"]
    assert storage.match("*.jsonl") == ["b.jsonl"]


def test_storage_imports_no_beam():
    code = "import sys, sftprep.storage, sftprep.errors; assert 'apache_beam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

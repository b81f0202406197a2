"""Hostile datasets given to `sftprep train` and `sftprep.ecosystem` (issue 13, cases 8 and 9):
paths that lead out of the dataset, malformed manifest, LATEST and Parquet. Each is refused in
one line with a non-zero exit, nothing outside the dataset is read or copied, and a traceback
appears only with --verbose."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftprep import contained, ecosystem
from sftprep.cli import main
from sftprep.contained import DatasetError
from tests.gcs_emulator import BUCKET
from tests.trainer.conftest import alpaca_data, small_data  # noqa: F401 (fixtures)

TRAIN = ("--model", "tiny", "--max-steps", "1", "--seq-len", "64", "--batch-size", "2",
         "--eval-every", "0")


@pytest.fixture
def dataset(small_data, tmp_path):  # noqa: F811
    """A fresh copy of the small alpaca dataset, plus a folder outside it holding a file."""
    root = tmp_path / "data"
    shutil.copytree(small_data, root)
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "secret.txt").write_text("not for the model folder")
    return root


def edit_manifest(root, change):
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def train_refused(data, tmp_path, capsys, *extra):
    """Run `sftprep train`; it must exit 2 with exactly one stderr line and write nothing."""
    out = tmp_path / "ckpt"
    code = main(["train", "--data", str(data), "--output", str(out), *TRAIN, *extra])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftprep: error: "), captured.err
    assert "Traceback" not in captured.err and not out.exists()
    return lines[0]


def tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# -- paths that lead out of the dataset -------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "root_itself"])
def test_a_tokenizer_path_out_of_the_dataset_is_refused_and_nothing_is_copied(
        dataset, tmp_path, capsys, how):
    elsewhere = tmp_path / "elsewhere"
    before = tree(elsewhere)
    if how == "absolute":
        edit_manifest(dataset, lambda m: m["tokenizer"].update(path=str(elsewhere)))
        expected = f"is absolute; a dataset may only name paths inside {dataset}"
    elif how == "dotdot":
        edit_manifest(dataset, lambda m: m["tokenizer"].update(path="../elsewhere"))
        expected = f"'../elsewhere' leads out of {dataset} (it resolves to {elsewhere})"
    elif how == "symlink":
        shutil.rmtree(dataset / "tokenizer")
        os.symlink(elsewhere, dataset / "tokenizer")
        expected = f"'tokenizer' leads out of {dataset} (it resolves to {elsewhere})"
    else:
        edit_manifest(dataset, lambda m: m["tokenizer"].update(path="."))
        expected = f"'.' leads out of {dataset}"
    line = train_refused(dataset, tmp_path, capsys)
    assert line.startswith(f"sftprep: error: {dataset}/manifest.json: tokenizer.path ")
    assert expected in line
    assert tree(elsewhere) == before
    with pytest.raises(DatasetError, match="tokenizer.path"):
        ecosystem.tokenizer_dir(str(dataset))


def test_a_tokenizer_file_or_shard_symlinked_out_of_the_dataset_is_refused(dataset, tmp_path,
                                                                          capsys):
    secret = tmp_path / "elsewhere" / "secret.txt"
    os.symlink(secret, dataset / "tokenizer" / "special_tokens_map.json")
    line = train_refused(dataset, tmp_path, capsys)
    assert line == (f"sftprep: error: tokenizer file "
                    f"'{dataset}/tokenizer/special_tokens_map.json' leads out of {dataset} "
                    f"(it resolves to {secret})")
    os.remove(dataset / "tokenizer" / "special_tokens_map.json")

    shard = dataset / "train" / "part-00001-of-00002.parquet"
    outside = tmp_path / "elsewhere" / "shard.parquet"
    shutil.move(shard, outside)
    os.symlink(outside, shard)
    line = train_refused(dataset, tmp_path, capsys)
    assert line == (f"sftprep: error: train shard '{shard}' leads out of {dataset} "
                    f"(it resolves to {outside})")


@pytest.mark.parametrize("pointer", ["../elsewhere", "/abs", "runs/../../elsewhere", "runs/link",
                                     "gs://other-bucket/runs/r1", ""])
def test_a_latest_pointing_out_of_the_output_is_not_followed(dataset, tmp_path, capsys, pointer):
    """The copy of the dataset at ../elsewhere is complete and trainable: only containment
    stops it."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    shutil.rmtree(tmp_path / "elsewhere")
    shutil.copytree(dataset, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", out / "runs" / "link")
    path = str(tmp_path / "elsewhere") if pointer == "/abs" else pointer
    (out / "LATEST").write_text(json.dumps({"run": "r1", "path": path}))
    line = train_refused(out, tmp_path, capsys)
    assert line.startswith(f"sftprep: error: {out}/LATEST: path ")
    assert ("leads out of" in line or "is absolute" in line
            or "must be a relative path" in line), line
    with pytest.raises(DatasetError, match="LATEST: path"):
        ecosystem.data_files(str(out))


@pytest.mark.parametrize("forged", ["/etc/passwd", "../../../../../../etc/passwd",
                                    "train/../../elsewhere/secret.txt", "file:///etc/passwd"])
def test_ecosystem_never_returns_a_file_outside_the_dataset(dataset, forged):
    def forge(manifest):
        manifest["outputs"].append({"split": "train", "path": forged, "rows": 1})

    edit_manifest(dataset, forge)
    with pytest.raises(DatasetError) as error:
        ecosystem.data_files(str(dataset))
    assert str(error.value).startswith(f"{dataset}/manifest.json: outputs[")
    assert ".path " in str(error.value) and "\n" not in str(error.value)


def test_the_untouched_dataset_still_trains_and_its_files_are_listed(dataset, tmp_path):
    """The control: the same copy, unforged, passes every check."""
    found = ecosystem.data_files(str(dataset))
    assert [os.path.basename(p) for p in found["train"]] == ["part-00000-of-00002.parquet",
                                                              "part-00001-of-00002.parquet"]
    assert main(["train", "--data", str(dataset), "--output", str(tmp_path / "ckpt"),
                 *TRAIN]) == 0
    assert (tmp_path / "ckpt" / "final" / "tokenizer.json").read_bytes() == (
        dataset / "tokenizer" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("root, relative, error", [
    ("gs://b/out", "runs/r1", None),
    ("gs://b/out/", "runs/./r1", None),
    ("gs://b/out", "../out2/runs/r1", "leads out of gs://b/out"),
    ("gs://b/out", "runs/../../out", "leads out of"),
    ("gs://b/out", "gs://other/out/runs/r1", "is absolute"),
    ("gs://b/out", "/out/runs/r1", "is absolute"),
    ("gs://b", "../c/x", "leads out of gs://b"),
    ("gs://b/out", ".", "leads out of"),
])
def test_gcs_paths_stay_in_the_bucket_and_under_the_prefix(root, relative, error):
    if error is None:
        assert contained.inside(root, relative, "x") == "gs://b/out/runs/r1"
    else:
        with pytest.raises(DatasetError, match=error):
            contained.inside(root, relative, "x")


@pytest.mark.parametrize("root, path, ok", [
    ("gs://b/out", "gs://b/out/train/a.parquet", True),
    ("gs://b/out", "gs://b/outside/a.parquet", False),
    ("gs://b/out", "gs://c/out/train/a.parquet", False),
    ("gs://b/out", "gs://b/out/../secret", False),
])
def test_gcs_listed_paths_are_checked_too(root, path, ok):
    if ok:
        assert contained.check_inside(root, path, "shard") == path
    else:
        with pytest.raises(DatasetError, match="leads out of"):
            contained.check_inside(root, path, "shard")


def test_a_gcs_latest_out_of_the_prefix_is_refused(gcs, small_data, tmp_path, capsys):  # noqa: F811
    root = f"gs://{BUCKET}/contained/out"
    for path in sorted(small_data.rglob("*")):
        if path.is_file():  # a complete dataset beside the output, not under it
            gcs.upload(path, f"gs://{BUCKET}/contained/other/{path.relative_to(small_data)}")
    gcs.upload_bytes(json.dumps({"run": "r1", "path": "../other"}).encode(), f"{root}/LATEST")
    line = train_refused(root, tmp_path, capsys)
    assert line == (f"sftprep: error: {root}/LATEST: path '../other' leads out of {root}")
    with pytest.raises(DatasetError, match="leads out of"):
        ecosystem.data_dir(root)


# -- malformed manifest, LATEST and Parquet ------------------------------------------------------


def _set(key_path, value):
    def change(manifest):
        target = manifest
        for key in key_path[:-1]:
            target = target[key]
        target[key_path[-1]] = value
    return change


MANIFESTS = [
    (b"{not json", "is not valid JSON (Expecting property name enclosed in double quotes, "
                   "line 1 column 2)"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"[1, 2]", "must hold a JSON object, not a list"),
    (b"{}", ": missing tokenizer"),
    (b'{"tokenizer": {"fingerprint": "x"}, "outputs": []}', ": missing tokenizer.vocab_size"),
    (b"[" * 100000, "is not valid JSON (nested too deeply)"),
    (_set(["tokenizer", "vocab_size"], "129284"),
     ": tokenizer.vocab_size must be an integer, not a string"),
    (_set(["tokenizer", "vocab_size"], True),
     ": tokenizer.vocab_size must be an integer, not a boolean"),
    (_set(["tokenizer", "vocab_size"], 0), ": tokenizer.vocab_size must be at least 1, got 0"),
    (_set(["tokenizer", "path"], ["tokenizer"]), ": tokenizer.path must be a string, not a list"),
    (_set(["tokenizer", "added_tokens"], [1]), ": tokenizer.added_tokens must be a list of strings"),
    (_set(["outputs"], {"train": 1}), ": outputs must be a list, not an object"),
    (_set(["outputs"], [{"split": "train", "path": 5, "rows": 1}]),
     ": outputs[0].path must be a string, not a number"),
    (_set(["outputs"], ["train/x.parquet"]), ": outputs[0] must be an object, not a string"),
    (_set(["outputs"], [{"split": "train", "path": "x", "rows": -1}]),
     ": outputs[0].rows must not be negative"),
]


@pytest.mark.parametrize("content, message", MANIFESTS,
                         ids=[f"manifest{i}" for i in range(len(MANIFESTS))])
def test_a_malformed_manifest_is_one_line(dataset, tmp_path, capsys, content, message):
    if callable(content):
        edit_manifest(dataset, content)
    else:
        (dataset / "manifest.json").write_bytes(content)
    line = train_refused(dataset, tmp_path, capsys)
    assert line.startswith(f"sftprep: error: {dataset}/manifest.json")
    assert line.endswith(message), line
    with pytest.raises(DatasetError) as error:
        ecosystem.data_files(str(dataset))
    assert str(error.value) == line[len("sftprep: error: "):]


def test_a_manifest_that_is_a_folder_or_huge_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    (dataset / "manifest.json").unlink()
    (dataset / "manifest.json").mkdir()
    assert train_refused(dataset, tmp_path, capsys) == (
        f"sftprep: error: {dataset}/manifest.json is a folder, not a file")
    (dataset / "manifest.json").rmdir()
    (dataset / "manifest.json").write_bytes(b" " * 2048)
    monkeypatch.setattr(contained, "MAX_MANIFEST_BYTES", 1024)
    assert train_refused(dataset, tmp_path, capsys) == (
        f"sftprep: error: {dataset}/manifest.json is larger than 1 KiB; it is not a file "
        "sftprep wrote")


@pytest.mark.parametrize("content, message", [
    (b"runs/r1", "is not valid JSON (Expecting value, line 1 column 1)"),
    (b'"runs/r1"', "must hold a JSON object, not a string"),
    (b'{"run": "r1"}', ": missing path"),
    (b'{"path": 1}', ": path must be a string, not a number"),
    (b'{"path": null}', ": path must be a string, not null"),
])
def test_a_malformed_latest_is_one_line(dataset, tmp_path, capsys, content, message):
    out = tmp_path / "out"
    shutil.copytree(dataset, out / "runs" / "r1")
    (out / "LATEST").write_bytes(content)
    line = train_refused(out, tmp_path, capsys)
    assert line == f"sftprep: error: {out}/LATEST {message}".replace("LATEST :", "LATEST:")
    with pytest.raises(DatasetError, match="LATEST"):
        ecosystem.manifest(str(out))


def _rewrite(shard, change):
    table = pq.read_table(shard)
    pq.write_table(change(table), shard)


@pytest.mark.parametrize("how, message", [
    ("text", "not a readable Parquet file (Parquet magic bytes not found in footer. Either the "
             "file is corrupted or this is not a parquet file.)"),
    ("truncated", "not a readable Parquet file ("),
    ("no_labels", "no labels column (columns: input_ids, num_tokens, num_trainable_tokens, "
                  "example_id, source, source_line, truncated); not a shard of `sftprep run`"),
    ("float_ids", "column input_ids is list<element: double>, expected a list of integers"),
    ("string_labels", "column labels is list<element: string>, expected a list of integers"),
    ("int_example_id", "column example_id is int64, expected a string"),
    ("newline_column", "no labels column (columns: input_ids, num_tokens, num_trainable_tokens, "
                       "example_id, source, source_line, evil\\nsftprep: error: forged); not a "
                       "shard of `sftprep run`"),
])
def test_a_shard_that_is_not_parquet_or_has_the_wrong_schema_is_one_line(
        dataset, tmp_path, capsys, how, message):
    shard = dataset / "train" / "part-00001-of-00002.parquet"
    if how == "text":
        shard.write_text('{"input_ids": [1, 2]}\n')
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "no_labels":
        _rewrite(shard, lambda t: t.drop_columns(["labels"]))
    elif how == "float_ids":
        _rewrite(shard, lambda t: t.set_column(0, "input_ids", t.column("input_ids").cast(
            pa.list_(pa.float64()))))
    elif how == "string_labels":
        _rewrite(shard, lambda t: t.set_column(1, "labels", t.column("labels").cast(
            pa.list_(pa.string()))))
    elif how == "newline_column":
        _rewrite(shard, lambda t: t.drop_columns(["labels"]).rename_columns(
            t.column_names[:1] + t.column_names[2:-1] + ["evil\nsftprep: error: forged"]))
    else:
        index = pq.read_schema(shard).get_field_index("example_id")
        _rewrite(shard, lambda t: t.set_column(index, "example_id",
                                               pa.array(range(t.num_rows), pa.int64())))
    line = train_refused(dataset, tmp_path, capsys)
    assert line.startswith(f"sftprep: error: {shard}: {message}"), line
    if how != "int_example_id":  # the ecosystem needs only the token columns
        with pytest.raises(DatasetError) as error:
            ecosystem.data_files(str(dataset))
        assert contained.one_line(str(error.value)) == line[len("sftprep: error: "):]


def test_verbose_adds_the_traceback_before_the_line(dataset, tmp_path, capsys):
    (dataset / "LATEST").write_text("[]")
    out = tmp_path / "ckpt"
    assert main(["train", "--data", str(dataset), "--output", str(out), *TRAIN,
                 "--verbose"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "DatasetError" in err
    assert err.splitlines()[-1] == (f"sftprep: error: {dataset}/LATEST must hold a JSON object, "
                                    "not a list")

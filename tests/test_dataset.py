"""sftprep.dataset: a finished run opened from its manifest; nothing read from a manifest or
LATEST leaves the dataset root."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from sftprep import dataset
from sftprep.errors import DataError
from tests.conftest import DATA


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from sftprep.pipeline.run import main

    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["--input", str(DATA / "alpaca_en_demo.jsonl"), "--output", str(out),
                 "--validation-fraction", "0.1", "--progress", "never"]) == 0
    return out


def test_a_run_opens_from_its_manifest(finished_run):
    opened = dataset.open_output(str(finished_run))
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert opened.root == str(finished_run)
    for split in dataset.SPLITS:
        listed = sorted(str(finished_run / e["path"]) for e in manifest["outputs"]
                        if e["split"] == split and e["rows"])
        assert opened.shards(split) == listed and listed
        assert opened.rows(split) == sum(pq.read_metadata(p).num_rows for p in listed)
    assert opened.tokenizer_dir == str(finished_run / "tokenizer")
    assert opened.vocab_size == manifest["tokenizer"]["vocab_size"]
    assert pq.read_schema(opened.shards("train")[0]).remove_metadata() == dataset.OUTPUT_SCHEMA


def _copy_run(finished_run, target):
    import shutil

    shutil.copytree(finished_run, target)
    return target


@pytest.mark.parametrize("forged", ["/etc/passwd", "../elsewhere/x.parquet", "train/../../x",
                                    "gs://other-bucket/x.parquet", "..", ""])
def test_forged_output_paths_are_refused(finished_run, tmp_path, forged):
    run = _copy_run(finished_run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["outputs"][0]["path"] = forged
    manifest["outputs"][0]["split"] = "train"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="leaves the dataset root|must be a relative path"):
        dataset.open_output(str(run)).shards("train")


def test_a_tokenizer_path_out_of_the_root_is_refused(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = str(tmp_path)
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="leaves the dataset root"):
        dataset.open_output(str(run)).tokenizer_dir


def test_a_symlink_out_of_the_root_is_refused(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path / "run")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", run / "link")
    with pytest.raises(DataError, match="a symlink"):
        dataset.inside(str(run), "link/x.parquet", "a shard")


@pytest.mark.parametrize("latest", ['{"path": "../elsewhere"}', '{"path": "/tmp"}', "[1]",
                                    "not json", '{"run": "x"}'])
def test_a_forged_or_malformed_latest_is_refused(tmp_path, latest):
    (tmp_path / "LATEST").write_text(latest)
    with pytest.raises(DataError) as caught:
        dataset.resolve_latest(str(tmp_path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("manifest", ["[]", "{", '{"outputs": {}, "tokenizer": {"vocab_size": 5}}',
                                      '{"outputs": [], "tokenizer": {"vocab_size": "5"}}',
                                      '{"outputs": [{"path": 1, "split": "train", "rows": 1}], '
                                      '"tokenizer": {"vocab_size": 5}}'])
def test_malformed_manifests_are_one_line_errors(tmp_path, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(DataError) as caught:
        dataset.open_output(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_a_forged_latest_in_a_bucket_is_refused(gcs):
    from tests.gcs_emulator import BUCKET

    root = f"gs://{BUCKET}/dataset-test"
    gcs.upload_bytes(b'{"path": "../../other-bucket/run"}', f"{root}/LATEST")
    with pytest.raises(DataError, match="leaves the dataset root"):
        dataset.resolve_latest(root)
    gcs.upload_bytes(b'{"path": "runs/1", "run": "1"}', f"{root}/LATEST")
    assert dataset.resolve_latest(root) == f"{root}/runs/1"

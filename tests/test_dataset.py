"""sftprep.dataset: a finished run opened from its manifest (shards, rows, schema, tokenizer), and
forged manifest outputs refused. tests/reliability/test_contained_readers.py covers the rest of
the containment rules."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sftprep import dataset
from sftprep.errors import DatasetError
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
    with pytest.raises(DatasetError, match="leads out of|is absolute|must be a relative path"):
        dataset.open_output(str(run)).shards("train")


def test_a_forged_latest_in_a_bucket_is_refused(gcs):
    from tests.gcs_emulator import BUCKET

    root = f"gs://{BUCKET}/dataset-test"
    gcs.upload_bytes(b'{"path": "../../other-bucket/run"}', f"{root}/LATEST")
    with pytest.raises(DatasetError, match="leads out of"):
        dataset.resolve_latest(root)
    gcs.upload_bytes(b'{"path": "runs/1", "run": "1"}', f"{root}/LATEST")
    assert dataset.resolve_latest(root) == f"{root}/runs/1"

"""`sftprep train` with its data and its checkpoints in a bucket (a real server on loopback)."""

from __future__ import annotations

import json

from sftprep.cli import main
from tests.gcs_emulator import BUCKET


def test_train_reads_a_published_dataset_from_a_bucket_and_writes_there(gcs, small_data, tmp_path):
    root = f"gs://{BUCKET}/trainer/data"
    for path in sorted(small_data.rglob("*")):
        if path.is_file():
            gcs.upload(path, f"{root}/runs/r1/{path.relative_to(small_data).as_posix()}")
    pointer = tmp_path / "LATEST"
    pointer.write_text(json.dumps({"run": "r1", "path": "runs/r1"}) + "\n")
    gcs.upload(pointer, f"{root}/LATEST")

    output = f"gs://{BUCKET}/trainer/ckpt"
    assert main(["train", "--data", root, "--output", output, "--model", "tiny",
                 "--max-steps", "2", "--seq-len", "128", "--batch-size", "2",
                 "--eval-every", "2", "--save-every", "2"]) == 0
    objects = gcs.read_tree(output)
    summary = json.loads(objects["train_summary.json"])
    assert summary["steps"] == 2 and len(summary["train_loss"]) == 2
    assert summary["val_loss"] is not None
    assert json.loads(objects["checkpoint.json"])["path"] in objects  # the pointer names a real one
    assert any(n.startswith("final/") for n in objects)

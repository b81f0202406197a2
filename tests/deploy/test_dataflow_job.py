"""The Dataflow job, built offline: DataflowRunner's --dry_run builds the full job request
(the graph Dataflow would run) without contacting Google Cloud; we check its steps and options."""

from __future__ import annotations

import base64
import json
import os

from sftprep.pipeline.run import main
from tests.conftest import DATA


def test_dataflow_job_graph(tmp_path, capsys):
    job_file = tmp_path / "job.json"
    out = tmp_path / "out"
    code = main(["--input", str(DATA / "seed_examples.jsonl"), "--output", str(out),
                 "--template", "chatml", "--validation-fraction", "0.1",
                 "--runner", "DataflowRunner", "--project", "sftprep-test",
                 "--region", "europe-west4", "--temp_location", "gs://sftprep-test/tmp",
                 "--sdk_container_image", "europe-west4-docker.pkg.dev/p/sftprep/sftprep:t",
                 "--experiments", "use_runner_v2", "--max_num_workers", "7",
                 "--dry_run", "True", "--dataflow_job_file", str(job_file)])
    assert code == 0
    assert "dry run" in capsys.readouterr().out
    document = json.loads(job_file.read_text())
    assert document["job"]["type"] == "JOB_TYPE_BATCH"
    transforms = {t["uniqueName"] for t in document["pipeline"]["components"]["transforms"].values()}
    for name in ("ReadRawRecords", "PrepareExamples", "WriteShards", "WriteRejected",
                 "WriteRunMetadata", "PrepareExamples/Prepare", "WriteShards/GroupByShard",
                 "ReadRawRecords/CountNewlines", "WriteRunMetadata/WriteStatsAndManifest"):
        assert name in transforms, name
    environments = document["pipeline"]["components"]["environments"].values()
    docker = [base64.b64decode(e["payload"]) for e in environments if e["urn"] == "beam:env:docker:v1"]
    assert any(b"europe-west4-docker.pkg.dev/p/sftprep/sftprep:t" in payload for payload in docker)
    options = document["options"]
    assert options["project"] == "sftprep-test" and options["max_num_workers"] == 7
    assert "use_runner_v2" in options["experiments"]
    assert not (out / "manifest.json").exists()  # nothing ran
    assert os.path.exists(out / "tokenizer" / "tokenizer.json")  # what workers will load

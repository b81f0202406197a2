"""The deployment files parse, and every command line in them is one sftprep accepts."""

from __future__ import annotations

import ast
import json
import pathlib
import shlex

import yaml

from sftprep.config import RUN_OPTIONS
from sftprep.pipeline.run import make_parser

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
CRON_FIELDS = 5


def parses_cleanly(args):
    """All of `args` are sftprep options (nothing would be passed on to Beam)."""
    namespace, rest = make_parser().parse_known_args(args)
    assert rest == [], rest
    return namespace


def valid_cron(expression: str) -> bool:
    fields = expression.split()
    return len(fields) == CRON_FIELDS and all(f and set(f) <= set("0123456789*/,-") for f in fields)


def test_flex_template_metadata_covers_every_option():
    metadata = json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())
    names = {p["name"] for p in metadata["parameters"]}
    # --progress, --local-processes and --local-engine only concern local runs: a Dataflow job
    # has no terminal to draw on, and its workers are Dataflow's.
    options = {o.key for o in RUN_OPTIONS if o.dataflow}
    assert options == {o.key for o in RUN_OPTIONS} - {"progress", "local_processes",
                                                       "local_engine"}
    assert options | {"config"} == names
    assert {"input", "map", "max_length", "template_kwargs", "rewritten_turns"} <= names
    # Dataflow passes parameters as --name=value: each must parse.
    values = {"publish": "true", "skip_if_unchanged": "false", "max_length": "2048",
              "train_on": "all", "truncation": "drop", "format": "alpaca", "reasoning": "drop",
              "rewritten_turns": "split", "template_kwargs": "a=1", "template_date": "2025-01-02"}
    args = [f"--{name}={values.get(name, '1')}" for name in sorted(names)]
    namespace = parses_cleanly(args)
    assert namespace.publish is True and namespace.skip_if_unchanged is False
    assert namespace.max_length == 2048


def test_dockerfile_points_the_launcher_at_the_entry_point():
    text = (DEPLOY / "dataflow" / "Dockerfile").read_text()
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/flex_main.py" in text
    assert "COPY deploy/dataflow/flex_main.py ./flex_main.py" in text
    ast.parse((DEPLOY / "dataflow" / "flex_main.py").read_text())


def test_kubernetes_manifests_parse_and_run_sftprep():
    cronjob = yaml.safe_load((DEPLOY / "schedule" / "kubernetes-cronjob.yaml").read_text())
    assert cronjob["kind"] == "CronJob" and valid_cron(cronjob["spec"]["schedule"])
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sftprep", "run"]
    assert parses_cleanly(container["args"]).publish is True
    flink = list(yaml.safe_load_all((DEPLOY / "flink" / "flink-session-cluster.yaml").read_text()))
    kinds = [doc["kind"] for doc in flink]
    assert kinds.count("Deployment") == 2 and "Service" in kinds and "ConfigMap" in kinds
    taskmanager = next(d for d in flink if d["metadata"]["name"].endswith("taskmanager"))
    sidecar = taskmanager["spec"]["template"]["spec"]["containers"][1]
    assert sidecar["args"] == ["--worker_pool"] and sidecar["ports"][0]["containerPort"] == 50000


def test_cloud_scheduler_job_launches_the_template_with_known_parameters():
    job = yaml.safe_load((DEPLOY / "schedule" / "cloud-scheduler-job.yaml").read_text())
    assert valid_cron(job["schedule"])
    parameters = job["body"]["launchParameter"]["parameters"]
    parses_cleanly([f"--{k}={v}" for k, v in parameters.items()])


def test_crontab_line_is_valid():
    lines = [line for line in (DEPLOY / "schedule" / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, CRON_FIELDS)
    assert valid_cron(" ".join(fields[:CRON_FIELDS]))
    command = shlex.split(fields[CRON_FIELDS])
    start = command.index("sftprep") + 2  # sftprep run ...
    end = command.index(">>")
    assert parses_cleanly(command[start:end]).skip_if_unchanged is True


def test_airflow_dag_structure():
    """Airflow is too heavy to install in CI; check the DAG's structure instead."""
    tree = ast.parse((DEPLOY / "schedule" / "sftprep_nightly_dag.py").read_text())
    calls = {node.func.id: node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    dag = {k.arg: k.value for k in calls["DAG"].keywords}
    assert ast.literal_eval(dag["dag_id"]) == "sftprep_nightly"
    assert valid_cron(ast.literal_eval(dag["schedule"]))
    assert ast.literal_eval(dag["catchup"]) is False
    operator = {k.arg: k.value for k in calls["DataflowStartFlexTemplateOperator"].keywords}
    body = ast.literal_eval(operator["body"])
    parameters = body["launchParameter"]["parameters"]
    parses_cleanly([f"--{k}={v}" for k, v in parameters.items()
                    if not str(v).startswith("{{")] + ["--input=x", "--output=y"])

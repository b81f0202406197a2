"""Airflow DAG: rebuild the SFT dataset every night on Dataflow, publishing atomically.

Needs apache-airflow and apache-airflow-providers-google. The Flex Template is built by
deploy/dataflow/launch.sh; set the Airflow Variables sftprep_template, sftprep_input and
sftprep_output. `skip_if_unchanged` makes nights with no new data finish in seconds, and
`publish` moves OUT/LATEST only after a complete, checked run.
"""

import datetime

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

with DAG(
    dag_id="sftprep_nightly",
    schedule="0 2 * * *",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": datetime.timedelta(minutes=10)},
    tags=["sftprep"],
) as dag:
    rebuild = DataflowStartFlexTemplateOperator(
        task_id="rebuild_sft_dataset",
        project_id="{{ var.value.gcp_project }}",
        location="{{ var.value.gcp_region }}",
        wait_until_finished=True,
        body={
            "launchParameter": {
                "jobName": "sftprep-nightly-{{ ds_nodash }}",
                "containerSpecGcsPath": "{{ var.value.sftprep_template }}",
                "parameters": {
                    "input": "{{ var.value.sftprep_input }}",
                    "output": "{{ var.value.sftprep_output }}",
                    "template": "chatml",
                    "validation_fraction": "0.02",
                    "publish": "true",
                    "keep_runs": "7",
                    "skip_if_unchanged": "true",
                },
                "environment": {"maxWorkers": 20, "machineType": "n2-standard-4",
                                "additionalExperiments": ["use_runner_v2"]},
            }
        },
    )

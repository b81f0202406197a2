"""Running a plan on Beam: its options and runner, the graph (graph.py), dry runs.

Without --runner the job runs in this process on Beam's FnApiRunner, offline (no Prism
download attempt); large local runs fork a child per core for batches and shards
(`local_workers`), or, where the platform cannot fork, use Beam's own worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Callable, List, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DebugOptions, DirectOptions, PipelineOptions, TestOptions)

from sftprep.pipeline import gcs
from sftprep.pipeline.graph import build_graph
from sftprep.pipeline.local_workers import can_fork
from sftprep.pipeline.plan import Plan, names_runner
from sftprep.pipeline.read import range_size
from sftprep.pipeline.stderr_filter import HideFailureTracebacks
from sftprep.tokenizer.runtime import TokenizerRuntime, usable_cpus

PARALLEL_LOCAL_BYTES = 64 * 1024 * 1024  # where fork is missing: Beam's worker processes
_LOCAL_MODE_FLAGS = ("--runner", "--direct_num_workers", "--direct_running_mode")


def pipeline_runner(beam_args: Sequence[str]):
    """None (let Beam pick from --runner) when the user named one; else the offline FnApiRunner."""
    if names_runner(beam_args):
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def local_parallelism(beam_args: Sequence[str], total_bytes: int) -> List[str]:
    """Beam options for a large local run where the platform cannot fork: one of Beam's worker
    processes per core (each starts afresh: about 3 s of imports and tokenizer loading).
    Nothing is added when the user chose a runner or a local mode."""
    if any(arg.split("=", 1)[0] in _LOCAL_MODE_FLAGS for arg in beam_args) or can_fork():
        return []
    cpus = usable_cpus()
    if cpus < 2 or total_bytes < PARALLEL_LOCAL_BYTES:
        return []
    return ["--direct_num_workers", str(cpus), "--direct_running_mode", "multi_processing"]


def range_bytes(chosen: int, options: PipelineOptions, total_bytes: int) -> int:
    """--range-bytes, or 16 MiB, cut down so local worker processes get 8 ranges each."""
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers if direct.direct_running_mode != "in_memory" else 1
    return range_size(chosen, workers or 1, total_bytes)


def run_on_beam(plan: Plan, beam_args: Sequence[str], chosen_range_bytes: int,
                runtime: Callable[[], TokenizerRuntime],
                local_processes: Callable[[], int], verbose: bool = False) -> bool:
    """Build the plan's graph and run it to the end; False for a dry run (built, not run).

    `runtime` builds the launcher's tokenizer runtime, which an in-process run hands to its
    workers instead of loading it again; `local_processes()`, how many children it forks."""
    gcs.use_anonymous_access(tuple(beam_args))
    total_bytes = sum(size for _, size, _ in plan.inputs)
    options = PipelineOptions(list(beam_args) + local_parallelism(beam_args, total_bytes))
    runner = pipeline_runner(beam_args)
    mode = options.view_as(DirectOptions).direct_running_mode
    in_process = runner is not None and mode == "in_memory"
    plan = dataclasses.replace(
        plan, range_bytes=range_bytes(chosen_range_bytes, options, total_bytes),
        preloaded=runtime() if in_process else None, serial_tokenizer=not in_process,
        local_processes=local_processes() if in_process else 0)
    pipeline = beam.Pipeline(runner=runner, options=options)
    keepalive = build_graph(pipeline, plan)
    # Local worker processes print a failed bundle's traceback on our stderr: filter it.
    quiet = HideFailureTracebacks() if not verbose and runner is not None and \
        mode == "multi_processing" else contextlib.nullcontext()
    with quiet:
        result = pipeline.run()
        if options.view_as(TestOptions).dry_run:
            _report_dry_run(result, options)
            return False
        result.wait_until_finish()
    del keepalive
    return True


def _report_dry_run(result, options: PipelineOptions) -> None:
    """--dry_run builds the job without running it. With --dataflow_job_file, what Dataflow would
    receive is written there for inspection: the job request, the Beam pipeline (every
    transform and its environment) and the resolved options."""
    job = getattr(result, "job", None)
    job_file = options.view_as(DebugOptions).dataflow_job_file
    if job is None or not job_file:
        print("sftprep: dry run; the job graph was built and not run")
        return
    from google.protobuf.json_format import MessageToDict

    document = {"job": json.loads(job.json()),
                "pipeline": MessageToDict(job.proto_pipeline),
                "options": options.get_all_options(drop_default=True)}
    with open(job_file, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, sort_keys=True, default=str)
    print(f"sftprep: dry run; the Dataflow job was built, not submitted: {job_file}")

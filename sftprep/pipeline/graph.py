"""The Beam graph of a run: the composite transforms of `sftprep.pipeline`, wired.

    input ranges -> ReadRawRecords -> PrepareExamples -+-> WriteShards -------+-> WriteRunMetadata
                                                       +-> rejected rows -----+-> WriteRejected
                                                       +-> stats partials ----+
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import apache_beam as beam

from sftprep.pipeline import files
from sftprep.pipeline.finish import Publishing, WriteRunMetadata
from sftprep.pipeline.prepare import REJECTED_TAG, STATS_TAG, PrepareExamples
from sftprep.pipeline.read import ReadRawRecords
from sftprep.pipeline.write import WriteRejected, WriteShards
from sftprep.transforms.mix import Mixing
from sftprep.transforms.prepare import PrepareSettings
from sftprep.tokenizer.runtime import TokenizerRuntime


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the graph of a run is built from, resolved at launch."""

    inputs: Sequence[Tuple[str, int, str]]  # (path, size, source name) of every input file
    output: str  # the folder the data goes to (OUT, or OUT/runs/<run_id> when publishing)
    settings: PrepareSettings
    tokenizer_json_path: str
    max_record_bytes: int
    batch_size: int
    range_bytes: int
    manifest_base: Dict[str, Any]
    max_rejected_fraction: float
    preloaded: Optional[TokenizerRuntime] = None  # in-process runs: the launcher's tokenizer
    serial_tokenizer: bool = True
    local_processes: int = 0  # in-process runs: forked children for batches and shards (0: none)
    publishing: Optional[Publishing] = None
    progress_dir: Optional[str] = None
    # A mixture with weights or shares: the shard writers plan each example's copies from
    # per-source totals of the deduplicated examples (see WriteShards).
    mixing: Optional[Mixing] = None
    source_order: Tuple[str, ...] = ()  # the sources' names; the first keeps a duplicate


def build_graph(pipeline: beam.Pipeline, plan: Plan):
    """Wire the whole run; returns what must stay referenced until the pipeline finishes."""
    settings, output = plan.settings, plan.output
    shard_counts = {"train": settings.num_shards}
    if settings.any_validation:
        shard_counts["validation"] = settings.validation_shards
    rejected_shards = settings.num_shards
    batches = pipeline | "ReadRawRecords" >> ReadRawRecords(
        plan.inputs, plan.max_record_bytes, plan.batch_size, plan.range_bytes, plan.progress_dir)
    prepare = PrepareExamples(settings, plan.tokenizer_json_path, rejected_shards,
                              files.join(output, files.PIECES), plan.preloaded,
                              plan.serial_tokenizer, plan.local_processes)
    prepared = batches | "PrepareExamples" >> prepare
    written = prepared.examples | "WriteShards" >> WriteShards(
        output, shard_counts, rejected_shards, plan.mixing, plan.source_order,
        settings.pack_length, plan.local_processes)
    rejected_files = ((prepared[REJECTED_TAG], written[REJECTED_TAG])
                      | "AllRejected" >> beam.Flatten()
                      | "WriteRejected" >> WriteRejected(output, rejected_shards))
    stats = (prepared[STATS_TAG], written[STATS_TAG]) | "AllStats" >> beam.Flatten()
    _ = ((stats, written.files, rejected_files)
         | "WriteRunMetadata" >> WriteRunMetadata(output, plan.manifest_base,
                                                  plan.max_rejected_fraction, plan.publishing))
    return prepare.keepalive

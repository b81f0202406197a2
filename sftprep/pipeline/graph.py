"""The Beam graph of a run: the composite transforms of `sftprep.pipeline`, wired.

    input ranges -> ReadRawRecords -> PrepareExamples -+-> WriteShards -------+-> WriteRunMetadata
                                                       +-> rejected rows -----+-> WriteRejected
                                                       +-> stats partials ----+
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import apache_beam as beam

from sftprep.pipeline import files
from sftprep.pipeline.finish import WriteRunMetadata
from sftprep.pipeline.prepare import REJECTED_TAG, STATS_TAG, PrepareExamples
from sftprep.pipeline.read import ReadRawRecords
from sftprep.pipeline.write import WriteRejected, WriteShards
from sftprep.transforms.mix import Mixing
from sftprep.transforms.prepare import PrepareSettings
from sftprep.transforms.tokenize import TokenizerRuntime


def build_graph(pipeline: beam.Pipeline, *, inputs: Sequence[Tuple[str, int, str]], output: str,
                settings: PrepareSettings, tokenizer_json_path: str, max_record_bytes: int,
                batch_size: int, range_bytes: int, manifest_base: Dict[str, Any],
                max_rejected_fraction: float,
                preloaded: Optional[TokenizerRuntime] = None, serial_tokenizer: bool = True,
                publishing: Optional[Dict[str, Any]] = None, progress_dir: Optional[str] = None,
                mixing: Optional[Mixing] = None, source_order: Tuple[str, ...] = ()):
    """Wire the whole run; returns what must stay referenced until the pipeline finishes.

    `inputs` holds (path, size, source name) for every input file. `mixing` (a mixture with
    weights or shares): the shard writers plan each example's copies from per-source totals of
    the deduplicated examples (see WriteShards); `source_order`: the sources' names, the first of
    which keeps a duplicate."""
    shard_counts = {"train": settings.num_shards}
    if settings.any_validation:
        shard_counts["validation"] = settings.validation_shards
    rejected_shards = settings.num_shards
    batches = pipeline | "ReadRawRecords" >> ReadRawRecords(inputs, max_record_bytes, batch_size,
                                                            range_bytes, progress_dir)
    prepare = PrepareExamples(settings, tokenizer_json_path, rejected_shards,
                              files.join(output, files.PIECES), preloaded, serial_tokenizer)
    prepared = batches | "PrepareExamples" >> prepare
    written = prepared.examples | "WriteShards" >> WriteShards(
        output, shard_counts, rejected_shards, mixing, source_order, settings.pack_length)
    rejected_files = ((prepared[REJECTED_TAG], written[REJECTED_TAG])
                      | "AllRejected" >> beam.Flatten()
                      | "WriteRejected" >> WriteRejected(output, rejected_shards))
    stats = (prepared[STATS_TAG], written[STATS_TAG]) | "AllStats" >> beam.Flatten()
    _ = ((stats, written.files, rejected_files)
         | "WriteRunMetadata" >> WriteRunMetadata(output, manifest_base, max_rejected_fraction,
                                                  publishing))
    return prepare.keepalive

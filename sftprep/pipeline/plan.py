"""What a run executes, resolved at launch: the same for Beam's graph (graph.py) and the inline
run (inline.py)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

from sftprep.pipeline.finish import Publishing
from sftprep.pipeline.write import ShardSpec
from sftprep.transforms.mix import Mixing
from sftprep.transforms.prepare import PrepareSettings
from sftprep.tokenizer.runtime import TokenizerRuntime


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run executes, resolved at launch (by either engine)."""

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


def shard_spec(plan: Plan) -> ShardSpec:
    """How the plan's shards are written: a train split, a validation split when any example
    goes there, as many rejected files as train shards."""
    settings = plan.settings
    shard_counts = {"train": settings.num_shards}
    if settings.any_validation:
        shard_counts["validation"] = settings.validation_shards
    return ShardSpec(plan.output, shard_counts, settings.num_shards, plan.mixing,
                     plan.source_order, settings.pack_length)


def names_runner(beam_args: Sequence[str]) -> bool:
    """Whether Beam's options pick a runner (--runner); without one a run is local."""
    return any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args)

"""Running a plan in this process, without Beam: small local runs, where Beam's start-up is most
of the time.

The same steps as Beam's graph (graph.py), one after the other, through the same functions:
ranges read (read.py), batches prepared (`transforms.prepare.prepare_batch`), each shard's
rows written (write.py), the rejected files, then stats, report and manifest (finish.py). Only
the hand-over differs: a shard's rows stay in memory instead of going through piece files and a
shuffle. Every step either engine takes sorts what it writes (rows by example id, rejected rows
by source and line), so both write the same bytes; tests/pipeline/test_inline.py holds them to
it. `sftprep run` picks this for local runs under FORKED_LOCAL_BYTES of input with no Beam
option (see run.py, --local-engine).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pyarrow as pa

from sftprep.pipeline.finish import finalize
from sftprep.pipeline.plan import Plan, shard_spec
from sftprep.pipeline.prepare import decode_examples, keyed_rejection, rows_table
from sftprep.pipeline.progress import ReadTally
from sftprep.pipeline.read import input_ranges, newlines_before, range_newlines, read_batches
from sftprep.pipeline.write import kept_totals, write_rejected, write_shard
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.mix import add_totals
from sftprep.transforms.prepare import prepare_batch
from sftprep.transforms.rows import ExampleRows
from sftprep.tokenizer.runtime import TokenizerRuntime

RejectedRow = Tuple[str, int, str, str]


def run_inline(plan: Plan, runtime: TokenizerRuntime) -> Dict[str, Any]:
    """Run the plan to the end; returns the manifest (finish.finalize raises RunFailed when the
    run fails its final checks)."""
    spec = shard_spec(plan)
    tally = ReadTally(plan.progress_dir) if plan.progress_dir else None
    stats: List[stats_lib.Stats] = []
    rows: Dict[Tuple[str, int], List[ExampleRows]] = {}
    rejected: Dict[int, List[RejectedRow]] = {}
    ranges = input_ranges(plan.inputs, plan.range_bytes)
    counts = {(r.path, r.index): range_newlines(r) for r in ranges if r.end is not None}
    sizes = {path: size for path, size, _ in plan.inputs}
    for file_range in ranges:
        for batch in read_batches(file_range, newlines_before(file_range, counts),
                                  sizes[file_range.path], plan.max_record_bytes, plan.batch_size,
                                  tally):
            prepared = prepare_batch(batch, plan.settings, runtime)
            for key, shard_rows in prepared.rows.by_shard():
                rows.setdefault(key, []).append(shard_rows)
            _add_rejected(rejected, (keyed_rejection(r, spec.rejected_shards)
                                     for r in prepared.rejected + prepared.dropped))
            stats.append(prepared.stats)
    if tally:
        tally.flush()
    tables = {key: rows_table(ExampleRows.concat(parts)) for key, parts in rows.items()}
    keys = spec.keys()
    mixture_plan = None
    if spec.mixing is not None:
        totals: Dict[str, Any] = {}
        for key in keys:
            part = kept_totals(_table(tables, key), spec.mixing, spec.source_order)
            if part is not None:
                add_totals(totals, part)
        mixture_plan = spec.mixing.plan(totals)
    data_files = []
    for split, index in keys:
        written = write_shard(spec, split, index, _table(tables, (split, index)), mixture_plan)
        data_files.append(written.file)
        stats.append(written.stats)
        _add_rejected(rejected, written.duplicates)
    rejected_files = [write_rejected(plan.output, index, spec.rejected_shards,
                                     rejected.get(index, []))
                      for index in range(spec.rejected_shards)]
    return finalize(plan.output, plan.manifest_base, plan.max_rejected_fraction,
                    plan.publishing, stats_lib.merge(stats), data_files, rejected_files)


def _table(tables: Dict[Tuple[str, int], pa.Table], key: Tuple[str, int]) -> pa.Table:
    """A shard's rows; a shard no example went to is empty (and still written)."""
    found: Optional[pa.Table] = tables.get(key)
    return found if found is not None else decode_examples(())


def _add_rejected(into: Dict[int, List[RejectedRow]], keyed) -> None:
    for shard, row in keyed:
        into.setdefault(shard, []).append(row)

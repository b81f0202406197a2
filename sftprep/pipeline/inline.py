"""Running a plan without Beam: local runs, in this process or on children forked from it.

The same steps as Beam's graph (graph.py), through the same functions, in three rounds:
1. every input range is read and its batches prepared (read.py, `transforms.prepare`); the
   examples go to piece files per shard (`prepare.ShardPieces`, each process holding examples
   across its ranges until the round's last task, a flush), the rejected rows and stats come back;
2. with a mixture, each shard's kept totals are counted and the copies planned;
3. each shard's pieces are written as its Parquet file (write.py).
Then the rejected files, stats, report and manifest (finish.py). With `plan.local_processes`
> 1 the ranges and shards of each round go to that many children forked from this process
(`local_workers.ForkedWorkers`): they inherit the tokenizer and its engine already loaded, so
a core costs a fork, and only ranges, piece paths, stats and rejected rows cross between
processes. Every step sorts what it writes (rows by example id, rejected rows by source and
line), so the bytes are Beam's whatever process did the work: tests/pipeline/test_inline.py
holds both engines to it. `sftprep run` picks this engine for local runs with no Beam option
(see run.py, --local-engine).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from sftprep.pipeline import files
from sftprep.pipeline.finish import finalize
from sftprep.pipeline.local_workers import ForkedWorkers
from sftprep.pipeline.plan import Plan, shard_spec
from sftprep.pipeline.prepare import ShardKey, ShardPieces, keyed_rejection
from sftprep.pipeline.progress import ReadTally
from sftprep.pipeline.read import input_ranges, read_batches, with_lines_before
from sftprep.pipeline.write import pieces_totals, write_pieces, write_rejected
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.mix import add_totals
from sftprep.transforms.prepare import prepare_batch
from sftprep.transforms.read import FileRange
from sftprep.tokenizer.runtime import TokenizerRuntime

RejectedRow = Tuple[str, int, str, str]
KeyedRejection = Tuple[int, RejectedRow]  # (rejected shard, row): prepare.keyed_rejection
# What a range or a flush gives back: the pieces written, stats, rejected rows.
RoundResult = Tuple[List[Tuple[ShardKey, str]], stats_lib.Stats, List[KeyedRejection]]
# How long a child's flush waits for the others to take theirs: at most the rest of one range.
FLUSH_WAIT_SECONDS = 3600.0


class _Steps:
    """The work of each round, as functions of a picklable argument; run in this process or
    on `processes` forked children, which inherit this object (and the tokenizer) at the fork.

    Each process holds its examples (`ShardPieces`) from range to range, so pieces are as
    large as the bound on what it holds allows rather than one per range and shard (with a
    shard per 64 MiB of input, that would be a piece of a few hundred rows per range and shard
    at 10M records). The round ends with one `flush` per process: each child takes exactly one,
    since a flush waits at a barrier until every child has taken its own."""

    def __init__(self, plan: Plan, runtime: TokenizerRuntime, processes: int):
        self.plan = plan
        self.spec = shard_spec(plan)
        self._runtime = runtime
        self._sizes = {path: size for path, size, _ in plan.inputs}
        # Each process's own progress file and held examples, made on first use.
        self._tallies: Dict[int, ReadTally] = {}
        self._buffers: Dict[int, ShardPieces] = {}
        self._barrier = multiprocessing.get_context("fork").Barrier(processes) \
            if processes > 1 else None

    def __call__(self, task: Tuple[str, Any]) -> Any:
        name, argument = task
        return getattr(self, name)(argument)

    def prepare(self, task: Tuple[FileRange, int]) -> RoundResult:
        """One range, `before` newlines into its file -> (pieces written, stats, rejected
        rows); its examples may stay in this process's buffers until `flush`."""
        file_range, before = task
        plan = self.plan
        tally = _own(self._tallies, lambda: ReadTally(plan.progress_dir)) \
            if plan.progress_dir else None
        pieces = _own(self._buffers, lambda: ShardPieces(files.join(plan.output, files.PIECES)))
        written: List[Tuple[ShardKey, str]] = []
        stats: List[stats_lib.Stats] = []
        rejected: List[KeyedRejection] = []
        for batch in read_batches(file_range, before, self._sizes[file_range.path],
                                  plan.max_record_bytes, plan.batch_size, tally):
            prepared = prepare_batch(batch, plan.settings, self._runtime)
            written += pieces.add(prepared.rows)
            rejected += [keyed_rejection(r, self.spec.rejected_shards)
                         for r in prepared.rejected + prepared.dropped]
            stats.append(prepared.stats)
        if tally:
            tally.flush()
        return written, stats_lib.merge(stats), rejected

    def flush(self, _: Any) -> RoundResult:
        """This process's buffered examples as pieces; on a child, held until every child has
        taken its flush."""
        pieces = self._buffers.pop(os.getpid(), None)
        written = pieces.flush() if pieces is not None else []
        if self._barrier is not None:
            self._barrier.wait(timeout=FLUSH_WAIT_SECONDS)
        return written, {}, []

    def totals(self, task: Tuple[ShardKey, List[str]]):
        return pieces_totals(self.spec, task[1])

    def write(self, task):
        (split, index), pieces, mixture_plan = task
        return write_pieces(self.spec, split, index, pieces, mixture_plan)


def run_inline(plan: Plan, runtime: TokenizerRuntime) -> Dict[str, Any]:
    """Run the plan to the end; returns the manifest (finish.finalize raises RunFailed when the
    run fails its final checks)."""
    steps = _Steps(plan, runtime, plan.local_processes)
    spec = steps.spec
    workers = None
    if plan.local_processes > 1:
        runtime.fast_bpe()  # built once, before the fork: the children inherit it
        workers = ForkedWorkers(f"inline-{id(steps)}", steps, plan.local_processes)
    try:
        run = _Rounds(steps, workers)
        ranges = input_ranges(plan.inputs, plan.range_bytes)
        stats: List[stats_lib.Stats] = []
        rejected: Dict[int, List[RejectedRow]] = {}
        pieces: Dict[ShardKey, List[str]] = {key: [] for key in spec.keys()}
        flushes = [("flush", None)] * max(plan.local_processes, 1)  # one per process
        prepares = (("prepare", item) for item in with_lines_before(ranges))
        for written, range_stats, range_rejected in run(itertools.chain(prepares, flushes)):
            for key, path in written:
                pieces[key].append(path)
            stats.append(range_stats)
            _add_rejected(rejected, range_rejected)
        mixture_plan = None
        if spec.mixing is not None:
            totals: Dict[str, Any] = {}
            for part in run([("totals", item) for item in pieces.items()]):
                if part is not None:
                    add_totals(totals, part)
            mixture_plan = spec.mixing.plan(totals)
        data_files = []
        for written in run([("write", (key, paths, mixture_plan))
                            for key, paths in pieces.items()]):
            data_files.append(written.file)
            stats.append(written.stats)
            _add_rejected(rejected, written.duplicates)
    finally:
        if workers is not None:
            workers.close()
    rejected_files = [write_rejected(plan.output, index, spec.rejected_shards,
                                     rejected.get(index, []))
                      for index in range(spec.rejected_shards)]
    return finalize(plan.output, plan.manifest_base, plan.max_rejected_fraction,
                    plan.publishing, stats_lib.merge(stats), data_files, rejected_files)


class _Rounds:
    """`run(tasks)`: every (step, argument), results in order, in this process or on the
    forked children (forked anew each round, gone at its end). The tasks are taken as the
    children take them (a few ahead), so a generator's work overlaps theirs."""

    def __init__(self, steps: _Steps, workers: Optional[ForkedWorkers]):
        self._steps = steps
        self._workers = workers

    def __call__(self, tasks: Iterable[Tuple[str, Any]]) -> Iterator[Any]:
        if self._workers is None:
            yield from map(self._steps, tasks)
            return
        for task in tasks:
            yield from self._workers.submit(task)
        yield from self._workers.finish()


def _own(store: Dict[int, Any], make: Callable[[], Any]) -> Any:
    """This process's entry of a per-process store, made on first use."""
    if os.getpid() not in store:
        store[os.getpid()] = make()
    return store[os.getpid()]


def _add_rejected(into: Dict[int, List[RejectedRow]], keyed: Iterable[KeyedRejection]) -> None:
    for shard, row in keyed:
        into.setdefault(shard, []).append(row)

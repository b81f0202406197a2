"""Forked worker processes for a local run: the pure work on every core, no restart.

A local run executes in this one process, inline (inline.py) or on Beam's FnApiRunner. The
CPU-heavy steps are pure functions of a picklable input (an input range -> its pieces, or a
batch of raw records -> its examples; a shard's pieces -> its Parquet file), so they can run
in child processes forked from this one. The children inherit the tokenizer and its BPE engine
already loaded, so a core costs a fork (milliseconds) instead of the ~3 s start-up of one of
Beam's own worker processes (imports, tokenizer load, engine build). Work is submitted in order
and its results come back in the same order, so the caller sees exactly what it would see with
the work done in this process.

Only local runs use this; on Dataflow, Flink or Spark a worker process per core already exists.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

# Work registered before the fork, by key: the children inherit it, nothing is pickled but the
# argument and the result.
_WORK: Dict[str, Callable[[Any], Any]] = {}
_PR_SET_PDEATHSIG = 1


def _start_child(parent: int) -> None:
    """In each child: die with the parent (a killed run leaves no orphans) and on SIGTERM, leave
    Ctrl-C to the parent, and tokenize on one thread (the children already fill the cores)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM kills a child: the run's own handler (run.py turns SIGTERM into an exit, inherited
    # through the fork) made a child stopped by the pool wait on its queue forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _call(key: str, argument: Any) -> Any:
    return _WORK[key](argument)


def _ready(_: Any) -> int:
    return os.getpid()


class ChildDied(RuntimeError):
    """A child exited mid-work (killed, or out of memory): the run cannot finish."""

    def __init__(self):
        super().__init__("a worker process of this run died (killed by a signal, or out of "
                         "memory); --local-processes 1 runs everything in one process")


def can_fork() -> bool:
    return hasattr(os, "fork") and hasattr(os, "register_at_fork")


class ForkedWorkers:
    """`processes` children running `work` on the arguments given to `submit`, in order.

    The children are forked at the first `submit` and exit at `finish` (the end of a bundle),
    so none lingers through later stages; the next `submit` forks new ones. At most two results
    per child are in flight; `submit` returns those finished beyond that, oldest first, and
    `finish` the rest. A child's exception is raised again here.
    """

    def __init__(self, key: str, work: Callable[[Any], Any], processes: int):
        _WORK[key] = work
        self._key = key
        self._processes = processes
        self._limit = 2 * processes
        self._pending: Deque[Future] = collections.deque()
        self._executor: Optional[ProcessPoolExecutor] = None

    def submit(self, argument: Any) -> List[Any]:
        if self._executor is None:
            self._start()
        try:
            self._pending.append(self._executor.submit(_call, self._key, argument))
        except BrokenProcessPool as err:
            raise ChildDied() from err
        done = []
        while len(self._pending) > self._limit:
            done.append(self._result(self._pending.popleft()))
        return done

    def finish(self) -> Iterator[Any]:
        """The results still in flight, oldest first; then the children exit."""
        try:
            while self._pending:
                yield self._result(self._pending.popleft())
        finally:
            self._stop()

    def close(self) -> None:
        self._stop()
        _WORK.pop(self._key, None)

    def _start(self) -> None:
        import multiprocessing

        gc.freeze()  # keep the inherited heap shared: the collector would touch every object
        for stream in (sys.stdout, sys.stderr):  # or the children flush the same bytes again
            stream.flush()
        self._executor = ProcessPoolExecutor(
            self._processes, mp_context=multiprocessing.get_context("fork"),
            initializer=_start_child, initargs=(os.getpid(),))
        # Fork every child now, while this thread is the only one doing work.
        list(self._executor.map(_ready, range(self._processes)))

    def _stop(self) -> None:
        """The children exit. With work still in flight (an error, or Ctrl-C, in this process
        or a child), they are stopped rather than waited for: their results are no longer
        wanted, and a task may wait on another that will never run (a flush at its barrier
        waited up to an hour after Ctrl-C)."""
        aborted = bool(self._pending)
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            if aborted:
                # The pool has no public way to stop a running task: its (private) processes.
                for process in list(getattr(self._executor, "_processes", {}).values()):
                    process.terminate()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    @staticmethod
    def _result(future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool as err:
            raise ChildDied() from err

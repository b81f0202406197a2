"""Forked worker processes of local runs (`sftprep.pipeline.local_workers`), without Beam."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from sftprep.pipeline.local_workers import ChildDied, ForkedWorkers, can_fork

pytestmark = pytest.mark.skipif(not can_fork(), reason="needs fork")


def _square_with_pid(value: int):
    time.sleep(0.005)  # long enough that both children take tasks
    return value * value, os.getpid()


def _forked_by(start) -> list:
    """The children of this process that `start()` forks (earlier tests may have left others,
    such as a storage emulator), and what it returned."""
    before = set(psutil.Process().children())
    result = start()
    return result, [c for c in psutil.Process().children() if c not in before]


def _fails_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("three is refused")
    return value


def test_results_come_back_in_submission_order_from_several_children():
    workers = ForkedWorkers("test-order", _square_with_pid, 2)
    try:
        for bundle in range(2):  # the children exit at finish; the next submit forks new ones
            results = []
            _, children = _forked_by(lambda: results.extend(workers.submit(0)))
            for value in range(1, 40):
                results += workers.submit(value)
                assert len(results) <= value + 1  # never ahead of what was submitted
            results += list(workers.finish())
            assert [square for square, _ in results] == [v * v for v in range(40)]
            assert {pid for _, pid in results} == {c.pid for c in children}
            assert len(children) == 2 and os.getpid() not in {c.pid for c in children}
            psutil.wait_procs(children, timeout=10)
            assert not any(child.is_running() for child in children)
    finally:
        workers.close()


def test_a_childs_exception_is_raised_in_the_parent_and_the_children_exit():
    workers = ForkedWorkers("test-error", _fails_on_three, 2)
    _, children = _forked_by(lambda: workers.submit(0))
    assert len(children) == 2
    try:
        with pytest.raises(ValueError, match="three is refused"):
            for value in range(10):
                workers.submit(value)
            list(workers.finish())
    finally:
        workers.close()
    psutil.wait_procs(children, timeout=10)
    assert not any(child.is_running() for child in children)


def test_children_die_with_a_killed_parent():
    """A SIGKILLed run leaves no orphan behind (PR_SET_PDEATHSIG on Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    script = textwrap.dedent("""
        import sys, time
        from sftprep.pipeline.local_workers import ForkedWorkers
        workers = ForkedWorkers("test-kill", time.sleep, 2)
        workers.submit(60)
        workers.submit(60)
        print("ready", flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        children = psutil.Process(parent.pid).children()
        assert len(children) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {alive}"
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_a_child_killed_midway_is_an_error_not_a_hang():
    workers = ForkedWorkers("test-dead-child", time.sleep, 2)
    try:
        _, children = _forked_by(lambda: workers.submit(30))
        children[0].kill()  # any child dying breaks the pool, running a task or not
        with pytest.raises(ChildDied, match="a worker process of this run died"):
            list(workers.finish())
    finally:
        workers.close()


def _fails_or_sleeps(value):
    if value == "fail":
        raise ValueError("refused")
    time.sleep(value)


def test_an_error_stops_the_work_in_flight_rather_than_waiting_for_it():
    """The other child's task (here two minutes of sleep; in a run, a flush waiting at its
    barrier for a flush that will never come) is stopped, not waited for."""
    workers = ForkedWorkers("test-abort", _fails_or_sleeps, 2)
    began = time.monotonic()
    try:
        _, children = _forked_by(lambda: workers.submit("fail"))
        workers.submit(120)
        with pytest.raises(ValueError, match="refused"):
            list(workers.finish())
    finally:
        workers.close()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert time.monotonic() - began < 60  # not the 120 s the sleeping child had left


def _two_children_asleep(finish: str, **popen):
    """A process whose two forked children each sleep 120 s, ending in `finish` (the code that
    waits for them), under run.py's SIGTERM handler as a run is, from before the fork: the
    process, once it has said "ready", and its children, in their sleep."""
    script = textwrap.dedent("""
        import time
        from sftprep.pipeline.local_workers import ForkedWorkers
        from sftprep.pipeline.run import _terminate_as_exit
        handler = _terminate_as_exit()  # held: a collected one puts SIG_DFL back
        handler.__enter__()
        workers = ForkedWorkers("test-stop", time.sleep, 2)
        workers.submit(120)
        workers.submit(120)
        print("ready", flush=True)
    """) + textwrap.dedent(finish)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              **popen)
    assert parent.stdout.readline().strip() == "ready"
    children = psutil.Process(parent.pid).children()
    time.sleep(0.5)  # both children in their sleep
    return parent, children


def test_ctrl_c_in_the_parent_stops_the_children_at_once():
    parent, children = _two_children_asleep("""
        try:
            list(workers.finish())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    try:
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=60) == 0  # not the 120 s the children had left
        assert parent.stdout.read().strip() == "interrupted"
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_sigterm_to_a_runs_process_group_stops_it_and_its_children():
    """SIGTERM to the run's process group (`timeout`, a scheduler; run.py turns it into an
    exit): the run exits and its children die. They inherited the run's handler through the
    fork, took the signal for an exception in their task, and one waited on its queue for ever
    while the run waited for it to exit (seen on a 10M run; this small case does not hang
    without the fix, it guards the behaviour)."""
    parent, children = _two_children_asleep("""
        list(workers.finish())
    """, start_new_session=True)
    try:
        os.killpg(parent.pid, signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        parent.kill()
        parent.wait(timeout=10)
        for child in children:
            if child.is_running():
                child.kill()

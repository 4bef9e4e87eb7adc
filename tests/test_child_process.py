"""Starting a server child (nexus_writer.child_process): what happens when the wait for its
ready line is interrupted, and when the process that started it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future

import pytest

from nexus_writer.child_process import process_state, start_child, terminate
from tests.conftest import PROMPT, ROOT, in_plain_thread, pid_alive, wait_until

#: Says it is starting, then never that it is ready.
NEVER_READY = "import time; print('starting', flush=True); time.sleep(60)"


def test_a_start_interrupted_by_ctrl_c_stops_the_child() -> None:
    """SIGINT (or SIGTERM that the testing kit turns into KeyboardInterrupt) while waiting
    for the ready line: the child is stopped, not left to run on as an orphan."""
    pids: list[int] = []
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt_once_starting(line: str) -> bool:  # in the drain thread
        if line.startswith("starting"):
            pids.extend(p for p in _children() if p not in before)
            assert main is not None
            signal.pthread_kill(main, signal.SIGINT)
        return False

    before = set(_children())
    with pytest.raises(KeyboardInterrupt):
        start_child(
            [sys.executable, "-c", NEVER_READY],
            name="never-ready",
            is_ready=interrupt_once_starting,
            timeout=60,
        )
    assert len(pids) == 1, pids
    # terminate() has waited for it: it is gone, not a zombie and not an orphan
    assert not pid_alive(pids[0]), "the child outlived the interrupted start"


#: Says it is ready with the signal Linux will send it when its parent (thread) ends.
REPORTS_PARENT_DEATH_SIGNAL = """\
import ctypes, time
signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
print("ready", signal.value, flush=True)
time.sleep(60)
"""


def _start_reporting_child() -> tuple[subprocess.Popen[bytes], list[str]]:
    return start_child(
        [sys.executable, "-c", REPORTS_PARENT_DEATH_SIGNAL],
        name="reporter",
        is_ready=lambda line: line.startswith("ready"),
        timeout=30,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_from_the_main_thread_is_stopped_when_this_process_ends() -> None:
    process, output = _start_reporting_child()
    try:
        assert output[-1].split() == ["ready", str(int(signal.SIGTERM))]
    finally:
        terminate(process)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_from_another_thread_does_not_end_with_that_thread() -> None:
    """Linux sends the parent-death signal when the *thread* that forked ends: asked for
    there, a server started by a worker thread would die with the worker."""
    started: Future[tuple[subprocess.Popen[bytes], list[str]]] = in_plain_thread(
        _start_reporting_child
    )
    process, output = started.result(timeout=60)
    try:
        assert output[-1].split() == ["ready", "0"]
    finally:
        terminate(process)


#: Starts a child that never exits, says its pid, and waits to be killed.
STARTER = """\
import sys, time
from nexus_writer.child_process import start_child
process, _ = start_child(
    [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"],
    name="sleeper", is_ready=lambda line: line.startswith("ready"), timeout=30,
)
print(process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_does_not_outlive_its_starter_killed_with_sigkill() -> None:
    """``kill -9`` of a pytest run (a CI job's hard time-out) left its servers running."""
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert starter.stdout is not None
        child = int(starter.stdout.readline())
        assert pid_alive(child)
    finally:
        starter.kill()
        starter.wait(30)
    # reparented, it is reaped by whichever process adopts it (a zombie until then)
    try:
        wait_until(lambda: process_state(child) in (None, "Z"), "the orphan's end", PROMPT * 6)
    finally:
        if process_state(child) not in (None, "Z"):
            os.kill(child, signal.SIGKILL)


def _children() -> list[int]:
    """This process's child processes (Linux)."""
    me = os.getpid()
    path = f"/proc/{me}/task/{me}/children"
    with open(path) as file:
        return [int(pid) for pid in file.read().split()]

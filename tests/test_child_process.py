"""Starting a server child (nexus_writer.child_process): what happens when the wait for its
ready line is interrupted."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from nexus_writer.child_process import start_child
from tests.conftest import pid_alive

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


def _children() -> list[int]:
    """This process's child processes (Linux)."""
    me = os.getpid()
    path = f"/proc/{me}/task/{me}/children"
    with open(path) as file:
        return [int(pid) for pid in file.read().split()]

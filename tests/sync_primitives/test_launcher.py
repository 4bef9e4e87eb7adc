"""Launcher: calls with arguments and results, inline on its own thread, ordered starts."""

from __future__ import annotations

import threading

import gevent
import pytest

from sync_primitives import AsyncResult, Launcher, Thread
from tests.conftest import PROMPT, HubThreads, in_plain_thread


def test_apply_runs_in_the_launchers_thread_with_args_and_result(hub_threads: HubThreads) -> None:
    remote: Thread = hub_threads()
    launcher, remote_ident = remote.apply(lambda: (Launcher(), threading.get_ident()))

    def where(a: int, b: int = 0) -> tuple[int, int]:
        return threading.get_ident(), a + b

    assert in_plain_thread(lambda: launcher.apply(where, 1, b=2)).result(PROMPT) == (
        remote_ident,
        3,
    )
    assert gevent.spawn(launcher.apply, where, 4).get(timeout=PROMPT) == (remote_ident, 4)


def test_apply_reraises_the_exception_of_fn(hub_threads: HubThreads) -> None:
    launcher = hub_threads().apply(Launcher)

    def fail() -> None:
        raise KeyError("no such scan")

    with pytest.raises(KeyError, match="no such scan"):
        launcher.apply(fail)
    result = launcher.apply_async(fail)
    assert isinstance(result, AsyncResult)
    with pytest.raises(KeyError):
        result.get(PROMPT)


def test_apply_on_own_thread_runs_inline_instead_of_deadlocking() -> None:
    launcher = Launcher()
    current = gevent.getcurrent()
    assert launcher.apply(gevent.getcurrent) is current  # same greenlet: inline


def test_functions_start_in_the_order_given(hub_threads: HubThreads) -> None:
    launcher = hub_threads().apply(Launcher)
    order: list[int] = []
    results = [launcher.apply_async(order.append, i) for i in range(200)]
    for result in results:
        result.get(PROMPT)
    assert order == list(range(200))


def test_blocking_function_does_not_hold_up_the_next(hub_threads: HubThreads) -> None:
    launcher = hub_threads().apply(Launcher)
    gate: AsyncResult[None] = AsyncResult()
    first = launcher.apply_async(gate.get, PROMPT)
    assert launcher.apply(lambda: "second") == "second"
    gate.set(None)
    first.get(PROMPT)


def test_launchers_calling_back_into_each_other_do_not_deadlock(hub_threads: HubThreads) -> None:
    a, b = hub_threads(name="a"), hub_threads(name="b")
    launcher_a, launcher_b = a.apply(Launcher), b.apply(Launcher)

    def ping(depth: int) -> int:
        """Runs alternately in a and b; each call waits for the next one in the other."""
        if depth == 0:
            return 0
        other = launcher_b if depth % 2 == 0 else launcher_a
        return 1 + other.apply(ping, depth - 1)

    assert launcher_a.apply(ping, 6) == 6


def test_statistics_count_started_work(hub_threads: HubThreads) -> None:
    launcher = hub_threads().apply(Launcher)
    for i in range(5):
        launcher.apply(int, i)
    stats = launcher.statistics()
    assert stats.started == 5 and stats.running == 0 and not stats.closed

"""Every blocking call made in a greenlet yields to its hub: other greenlets and triggers run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest

from sync_primitives import AsyncResult, Event, HubTrigger, Lock, Queue, Thread
from tests.conftest import PROMPT, in_plain_thread, wait_until, yield_now


def _blocked_lock() -> tuple[Callable[[], Any], Callable[[], Any]]:
    lock, may_release = Lock(), Event()

    def hold() -> None:  # in another thread, which must also be the one to release
        with lock:
            may_release.wait(PROMPT)

    in_plain_thread(hold)
    wait_until(lock.locked, "another thread holds the lock")
    return lambda: lock.acquire(timeout=PROMPT), may_release.set


def _blocked_event() -> tuple[Callable[[], Any], Callable[[], Any]]:
    event = Event()
    return lambda: event.wait(PROMPT), event.set


def _blocked_result() -> tuple[Callable[[], Any], Callable[[], Any]]:
    result: AsyncResult[int] = AsyncResult()
    return lambda: result.get(PROMPT), lambda: result.set(1)


def _blocked_get() -> tuple[Callable[[], Any], Callable[[], Any]]:
    queue: Queue[int] = Queue()
    return lambda: queue.get(timeout=PROMPT), lambda: queue.put(1)


def _blocked_put() -> tuple[Callable[[], Any], Callable[[], Any]]:
    queue: Queue[int] = Queue(maxsize=1)
    queue.put(0)
    return lambda: queue.put(1, timeout=PROMPT), queue.get_nowait


def _blocked_thread_get() -> tuple[Callable[[], Any], Callable[[], Any]]:
    gate = Event()
    thread = Thread(target=gate.wait)
    thread.start()
    return lambda: thread.get(PROMPT), gate.set


@pytest.mark.parametrize(
    "make_blocked",
    [
        _blocked_lock,
        _blocked_event,
        _blocked_result,
        _blocked_get,
        _blocked_put,
        _blocked_thread_get,
    ],
    ids=["Lock.acquire", "Event.wait", "AsyncResult.get", "Queue.get", "Queue.put", "Thread.get"],
)
def test_blocking_call_in_greenlet_lets_its_hub_run(
    make_blocked: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]],
) -> None:
    block, unblock = make_blocked()
    blocked = gevent.spawn(block)
    ticks: list[int] = []

    def tick() -> None:
        for i in range(20):
            ticks.append(i)
            yield_now()

    triggered = Event()
    trigger = HubTrigger(triggered.set)
    ticker = gevent.spawn(tick)
    in_plain_thread(trigger.send).result(PROMPT)  # sent from another thread meanwhile
    ticker.join(timeout=PROMPT)
    wait_until(triggered.is_set, "the trigger ran in this hub")
    assert ticks == list(range(20))
    assert not blocked.ready()  # still blocked, yet the hub ran everything else
    unblock()
    blocked.get(timeout=PROMPT)

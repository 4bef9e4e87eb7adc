"""Queue: FIFO, bounds, time-outs and the standard library's exceptions, across threads."""

from __future__ import annotations

import queue as stdlib_queue
import time

import gevent
import pytest

from sync_primitives import Empty, Full, Queue
from tests.conftest import PROMPT, HubThreads, in_plain_thread, wait_until


def test_exceptions_are_the_standard_librarys() -> None:
    assert Empty is stdlib_queue.Empty and Full is stdlib_queue.Full


def test_fifo_and_nowait_variants() -> None:
    queue: Queue[int] = Queue()
    assert queue.empty() and queue.qsize() == 0 and not queue.full()
    for i in range(5):
        queue.put_nowait(i)
    assert queue.qsize() == 5
    assert [queue.get_nowait() for _ in range(5)] == list(range(5))
    with pytest.raises(Empty):
        queue.get_nowait()
    with pytest.raises(Empty):
        queue.get(block=False)


def test_bounded_queue_full_and_blocking_put() -> None:
    queue: Queue[str] = Queue(maxsize=2)
    queue.put("a")
    queue.put("b")
    assert queue.full()
    with pytest.raises(Full):
        queue.put_nowait("c")
    started = time.monotonic()
    with pytest.raises(Full):
        queue.put("c", timeout=0.2)
    assert time.monotonic() - started >= 0.19
    putter = in_plain_thread(queue.put, "c", True, PROMPT)
    wait_until(lambda: queue.statistics().putters_waiting == 1, "the putter waits")
    assert queue.get() == "a"  # makes room: the putter goes on
    putter.result(PROMPT)
    assert [queue.get_nowait() for _ in range(2)] == ["b", "c"]


def test_get_timeout_is_honoured_in_greenlet_and_plain_thread() -> None:
    queue: Queue[int] = Queue()

    def timed_get() -> float:
        started = time.monotonic()
        with pytest.raises(Empty):
            queue.get(timeout=0.2)
        return time.monotonic() - started

    assert 0.19 <= gevent.spawn(timed_get).get(timeout=PROMPT) < 1.2
    assert 0.19 <= in_plain_thread(timed_get).result(PROMPT) < 1.2
    assert queue.statistics().getters_waiting == 0


def test_negative_timeout_is_rejected() -> None:
    queue: Queue[int] = Queue()
    with pytest.raises(ValueError, match="non-negative"):
        queue.get(timeout=-1)


def test_items_put_from_a_hub_greenlet_reach_a_hubless_thread(hub_threads: HubThreads) -> None:
    queue: Queue[int] = Queue()
    getter = in_plain_thread(lambda: [queue.get(timeout=PROMPT) for _ in range(100)])

    def put_all() -> None:
        for i in range(100):
            queue.put(i)

    hub_threads().apply(put_all)
    assert getter.result(PROMPT) == list(range(100))


def test_each_item_wakes_one_of_many_waiting_getters(hub_threads: HubThreads) -> None:
    queue: Queue[int] = Queue()
    remote = hub_threads()
    in_hub = [remote.apply_async(queue.get, True, PROMPT) for _ in range(3)]
    in_plain = [in_plain_thread(queue.get, True, PROMPT) for _ in range(3)]
    wait_until(lambda: queue.statistics().getters_waiting == 6, "six getters wait")
    for i in range(6):
        queue.put(i)
    received = [r.get(PROMPT) for r in in_hub] + [f.result(PROMPT) for f in in_plain]
    assert sorted(received) == list(range(6))


def test_killed_getter_passes_its_wakeup_on() -> None:
    queue: Queue[str] = Queue()
    first = gevent.spawn(queue.get, True, PROMPT)
    second = gevent.spawn(queue.get, True, PROMPT)
    wait_until(lambda: queue.statistics().getters_waiting == 2, "two getters wait")
    queue.put("item")  # commits the wake-up to the first getter; the kill reaches it first
    first.kill(block=True)
    assert second.get(timeout=PROMPT) == "item"

"""The waiter core: who gets a wake-up, hand-over of a lock, and arguments checked first.

One named test per defect of issue 7 that lives in ``_waiter`` and the primitives built on
it. Each asserts that a wake-up arrives *promptly*: well inside the time-out the waiter was
given, never merely before it.
"""

from __future__ import annotations

import math
import queue as std_queue
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import monkey

from sync_primitives import AsyncResult, Event, Lock, Queue, RLock, Thread
from tests.conftest import PROMPT, HubThreads, in_plain_thread, wait_until

#: A wake-up counts as prompt well under the waiter's own time-out (LONG).
LONG = 2.0
PROMPTLY = 0.5

_native_lock = monkey.get_original("_thread", "allocate_lock")


def _park_then_end_thread(park: Callable[[], Any], parked: Callable[[], bool]) -> None:
    """In a new plain thread that runs a hub: spawn ``park`` in a greenlet, wait until
    ``parked()`` says it sleeps, then let the thread end with the greenlet still asleep."""

    def body() -> None:
        gevent.spawn(park)
        wait_until(parked, "the doomed greenlet sleeps")

    thread = threading.Thread(target=body, name="doomed")
    thread.start()
    thread.join(PROMPT)
    assert not thread.is_alive()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started


# -- defect 1: a wake-up given to a dead waiter is lost -------------------------------------


def test_queue_put_skips_a_getter_whose_thread_ended() -> None:
    items: Queue[int] = Queue()
    _park_then_end_thread(items.get, lambda: items.statistics().getters_waiting == 1)
    assert items.statistics().getters_waiting == 0  # the dead waiter is gone at once

    live = in_plain_thread(lambda: _timed(lambda: items.get(timeout=LONG)))
    wait_until(lambda: items.statistics().getters_waiting == 1, "the live getter sleeps")
    items.put(7)
    value, elapsed = live.result(PROMPT)
    assert value == 7
    assert elapsed < PROMPTLY


def test_lock_release_skips_a_waiter_whose_thread_ended() -> None:
    lock = Lock()
    lock.acquire()
    _park_then_end_thread(lock.acquire, lambda: lock.statistics().waiting == 1)
    assert lock.statistics().waiting == 0

    live = gevent.spawn(lambda: _timed(lambda: lock.acquire(timeout=LONG)))
    wait_until(lambda: lock.statistics().waiting == 1, "the live waiter sleeps")
    lock.release()
    acquired, elapsed = live.get(timeout=PROMPT)
    assert acquired is True
    assert elapsed < PROMPTLY


def test_bounded_queue_get_skips_a_putter_whose_thread_ended() -> None:
    items: Queue[int] = Queue(maxsize=1)
    items.put(0)
    _park_then_end_thread(lambda: items.put(1), lambda: items.statistics().putters_waiting == 1)
    assert items.statistics().putters_waiting == 0

    live = in_plain_thread(lambda: _timed(lambda: items.put(2, timeout=LONG)))
    wait_until(lambda: items.statistics().putters_waiting == 1, "the live putter sleeps")
    assert items.get_nowait() == 0
    _, elapsed = live.result(PROMPT)
    assert elapsed < PROMPTLY
    assert items.get_nowait() == 2  # the dead putter's item never went in


class _HubHeldNatively:
    """A plain thread that runs a hub, parks a greenlet in ``park``, then blocks *natively*
    (its hub cannot run) until :meth:`end` lets it return: a wake-up posted to it meanwhile
    is accepted by its port but can never be delivered."""

    def __init__(self, park: Callable[[], Any], parked: Callable[[], bool]) -> None:
        self._gate = _native_lock()
        self._gate.acquire()
        self._parked = parked
        self._park = park
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._body, name="held")
        self._thread.start()
        assert self._ready.wait(PROMPT)

    def _body(self) -> None:
        gevent.spawn(self._park)
        wait_until(self._parked, "the greenlet of the held thread sleeps")
        self._ready.set()
        self._gate.acquire()  # native: the hub does not run again

    def end(self) -> None:
        self._gate.release()
        self._thread.join(PROMPT)
        assert not self._thread.is_alive()


def test_queue_wakeup_queued_for_an_ending_thread_passes_to_the_next_getter() -> None:
    items: Queue[int] = Queue()
    held = _HubHeldNatively(items.get, lambda: items.statistics().getters_waiting == 1)
    live = in_plain_thread(lambda: _timed(lambda: items.get(timeout=LONG)))
    wait_until(lambda: items.statistics().getters_waiting == 2, "both getters sleep")
    items.put(1)  # wakes the held greenlet first: its port takes the wake-up
    wait_until(lambda: items.statistics().getters_waiting == 1, "the wake-up went out")
    held.end()  # ...and it ends before its hub could deliver it
    value, elapsed = live.result(PROMPT)
    assert value == 1
    assert elapsed < PROMPTLY


def test_lock_handed_to_an_ending_thread_passes_to_the_next_waiter() -> None:
    lock = Lock()
    lock.acquire()
    held = _HubHeldNatively(lock.acquire, lambda: lock.statistics().waiting == 1)
    live = in_plain_thread(lambda: _timed(lambda: lock.acquire(timeout=LONG)))
    wait_until(lambda: lock.statistics().waiting == 2, "both waiters sleep")
    lock.release()  # hands the lock to the held greenlet
    held.end()
    acquired, elapsed = live.result(PROMPT)
    assert acquired is True
    assert elapsed < PROMPTLY
    assert lock.statistics().waiting == 0


def test_lock_handed_to_an_ending_thread_is_released_when_nobody_else_waits() -> None:
    lock = Lock()
    lock.acquire()
    held = _HubHeldNatively(lock.acquire, lambda: lock.statistics().waiting == 1)
    lock.release()
    held.end()
    assert not lock.locked()
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_event_waiters_of_an_ended_thread_leave_no_trace() -> None:
    event = Event()
    _park_then_end_thread(event.wait, lambda: event.statistics().waiting == 1)
    assert event.statistics().waiting == 0
    event.set()
    assert event.wait(0)


# -- defect 3: the lock starves its waiters -------------------------------------------------


def _hammer(lock: Lock, stop: threading.Event) -> threading.Thread:
    """A plain thread that takes ``lock`` again and again until ``stop``, dropping the GIL
    while it holds it (as an h5py write would): a release that merely frees the lock lets
    this thread take it back before a woken waiter can run."""

    def loop() -> None:
        while not stop.is_set():
            with lock:
                time.sleep(0)

    thread = threading.Thread(target=loop, name="hammer", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("waiter_kind", ["plain thread", "greenlet of another hub"])
@pytest.mark.parametrize("lock_class", [Lock, RLock])
def test_lock_waiter_is_not_starved_by_a_looping_releaser(
    lock_class: type[Lock], waiter_kind: str, hub_threads: HubThreads
) -> None:
    lock = lock_class()
    stop = threading.Event()
    hammer = _hammer(lock, stop)
    try:

        def twenty_tries() -> list[float]:
            waits = []
            for _ in range(20):
                acquired, elapsed = _timed(lambda: lock.acquire(timeout=0.5))
                assert acquired, f"timed out after {elapsed:.3f} s"
                lock.release()
                waits.append(elapsed)
            return waits

        if waiter_kind == "plain thread":
            waits = in_plain_thread(twenty_tries).result(PROMPT * 4)
        else:
            waits = hub_threads().apply_async(twenty_tries).get(PROMPT * 4)
    finally:
        stop.set()
        hammer.join(PROMPT)
    assert max(waits) < PROMPTLY


def test_released_lock_belongs_to_the_first_waiter_before_it_runs() -> None:
    lock = Lock()
    lock.acquire()

    def take_and_give_back() -> bool:
        acquired = lock.acquire(True, PROMPT)
        lock.release()
        return acquired

    first = gevent.spawn(take_and_give_back)
    second = gevent.spawn(lock.acquire, True, PROMPT)
    wait_until(lambda: lock.statistics().waiting == 2, "two greenlets wait")
    lock.release()
    # Handed over, not merely freed: no one can barge in, not even the releaser.
    assert lock.locked()
    assert lock.acquire(blocking=False) is False
    assert lock.statistics().owner == repr(first)
    assert first.get(timeout=PROMPT) is True
    assert second.get(timeout=PROMPT) is True  # and from first, in turn, to second
    assert lock.statistics().owner == repr(second)


# -- defect 4: arguments checked only under contention --------------------------------------


def _busy(lock: Lock) -> Lock:
    in_plain_thread(lock.acquire).result(PROMPT)  # held by another thread
    return lock


@pytest.mark.parametrize("state", ["free", "busy"])
def test_lock_arguments_mean_what_threading_says_whatever_the_state(state: str) -> None:
    lock = Lock() if state == "free" else _busy(Lock())
    for blocking, timeout in [(False, 0), (False, 1), (False, 0.5)]:
        with pytest.raises(ValueError, match="non-blocking"):
            lock.acquire(blocking, timeout)
    for bad in [-2, -0.5, math.nan, -(10**400)]:
        with pytest.raises(ValueError):
            lock.acquire(True, bad)
    with pytest.raises(OverflowError):
        lock.acquire(True, math.inf)
    with pytest.raises(TypeError):
        lock.acquire(True, "1")  # type: ignore[arg-type]
    assert lock.statistics().waiting == 0
    expect = state == "free"
    assert lock.acquire(False, -1) is expect  # -1: threading's "no timeout"
    if expect:
        lock.release()
    assert lock.acquire(True, 0) is expect
    if expect:
        lock.release()


def test_lock_timeout_minus_one_waits_forever_like_threading() -> None:
    lock = Lock()
    lock.acquire()
    waiter = gevent.spawn(lock.acquire, True, -1)
    wait_until(lambda: lock.statistics().waiting == 1, "the waiter sleeps")
    lock.release()
    assert waiter.get(timeout=PROMPT) is True


@pytest.mark.parametrize("state", ["empty", "not empty"])
def test_queue_timeouts_are_checked_before_any_fast_path(state: str) -> None:
    items: Queue[int] = Queue(maxsize=1)
    if state == "not empty":
        items.put(1)
    for bad in [-1, -0.5, math.nan, -(10**400)]:
        with pytest.raises(ValueError, match="timeout"):
            items.get(True, bad)
        with pytest.raises(ValueError, match="timeout"):
            items.put(2, True, bad)
    with pytest.raises(OverflowError):
        items.get(True, math.inf)
    unbounded: Queue[int] = Queue()
    with pytest.raises(ValueError, match="timeout"):
        unbounded.put(1, True, -1)
    assert unbounded.qsize() == 0
    # block=False ignores the timeout, as queue.Queue does
    if state == "empty":
        with pytest.raises(std_queue.Empty):
            items.get(False, -1)
        with pytest.raises(std_queue.Empty):
            items.get(True, 0)
        items.put(3, False, -1)
    else:
        with pytest.raises(std_queue.Full):
            items.put(2, True, 0)
        assert items.get(False, -1) == 1
    assert items.statistics().getters_waiting == items.statistics().putters_waiting == 0


@pytest.mark.parametrize("is_set", [False, True])
def test_event_and_result_timeouts_behave_as_threading_whatever_the_state(is_set: bool) -> None:
    event = Event()
    result: AsyncResult[int] = AsyncResult()
    if is_set:
        event.set()
        result.set(5)
    for timeout in [-1, -0.5, math.nan, 0]:
        # threading.Event.wait and Future.result: a time-out <= 0 (or NaN) does not wait
        value, elapsed = _timed(lambda t=timeout: event.wait(t))  # type: ignore[misc]
        assert value is is_set
        assert elapsed < PROMPTLY
        assert result.wait(timeout) is is_set
        if is_set:
            assert result.get(timeout) == 5
        else:
            with pytest.raises(TimeoutError):
                result.get(timeout)
    # an int beyond a float's range is still only negative
    assert event.wait(-(10**400)) is is_set
    assert result.wait(-(10**400)) is is_set
    for wait in (event.wait, result.wait, result.get):
        with pytest.raises(OverflowError):
            wait(10**400)
        with pytest.raises(OverflowError):
            wait(math.inf)
        with pytest.raises(TypeError):
            wait("1")  # type: ignore[arg-type]
    assert event.statistics().waiting == result.statistics().waiting == 0


def test_thread_join_accepts_threading_timeouts(hub_threads: HubThreads) -> None:
    thread: Thread = hub_threads()
    with pytest.raises(TimeoutError):
        thread.join(-1)  # like threading.Thread.join(-1): no wait
    thread.stop(timeout=PROMPT)

"""Lock and RLock: ownership, time-outs, refusal to deadlock, and yielding while blocked."""

from __future__ import annotations

import time

import gevent
import pytest

from sync_primitives import Lock, RLock, WouldDeadlockError
from tests.conftest import PROMPT, call_in_hub, in_plain_thread, wait_until, yield_now


@pytest.mark.parametrize("lock_class", [Lock, RLock])
def test_uncontended_acquire_release_and_context_manager(lock_class: type[Lock]) -> None:
    lock = lock_class()
    assert lock.acquire() is True
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with lock:
        assert lock.statistics().locked
    assert lock.statistics() == type(lock.statistics())(False, None, 0, 0)


@pytest.mark.parametrize("lock_class", [Lock, RLock])
def test_release_by_non_owner_raises(lock_class: type[Lock]) -> None:
    lock = lock_class()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    lock.acquire()
    with pytest.raises(RuntimeError, match="not held"):
        in_plain_thread(lock.release).result(PROMPT)
    with pytest.raises(RuntimeError, match="not held"):
        gevent.spawn(lock.release).get(timeout=PROMPT)
    lock.release()


def test_lock_reacquire_by_owner_refuses_to_deadlock() -> None:
    lock = Lock()
    with lock:
        assert lock.acquire(blocking=False) is False
        with pytest.raises(WouldDeadlockError):
            lock.acquire()
        with pytest.raises(WouldDeadlockError):
            lock.acquire(timeout=0.1)


def test_rlock_is_reentrant_for_its_owner_only() -> None:
    lock = RLock()
    lock.acquire()
    lock.acquire()
    assert lock.statistics().depth == 2
    assert in_plain_thread(lock.acquire, True, 0.05).result(PROMPT) is False
    lock.release()
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    assert in_plain_thread(lambda: lock.acquire(blocking=False)).result(PROMPT) is True


@pytest.mark.parametrize("lock_class", [Lock, RLock])
def test_acquire_timeout_is_honoured_in_greenlet_and_plain_thread(lock_class: type[Lock]) -> None:
    lock = lock_class()
    lock.acquire()

    def timed_acquire() -> float:
        started = time.monotonic()
        assert lock.acquire(timeout=0.2) is False
        return time.monotonic() - started

    for elapsed in (
        gevent.spawn(timed_acquire).get(timeout=PROMPT),
        in_plain_thread(timed_acquire).result(PROMPT),
    ):
        assert 0.19 <= elapsed < 0.2 + 1.0
    assert lock.statistics().waiting == 0  # timed-out waiters leave no trace
    lock.release()


def test_greenlet_waiting_for_lock_yields_to_its_hub() -> None:
    lock = Lock()
    lock.acquire()
    ticks: list[int] = []
    waiter = gevent.spawn(lock.acquire, True, PROMPT)

    def tick() -> None:
        for i in range(50):
            ticks.append(i)
            yield_now()

    ticker = gevent.spawn(tick)
    ticker.join(timeout=PROMPT)
    assert ticks == list(range(50))  # the hub kept running while the waiter was blocked
    assert not waiter.ready()
    lock.release()
    assert waiter.get(timeout=PROMPT) is True


def test_blocking_acquire_in_hub_greenlet_refuses_to_deadlock() -> None:
    lock = Lock()
    lock.acquire()
    assert isinstance(call_in_hub(lock.acquire), WouldDeadlockError)
    lock.release()
    assert call_in_hub(lambda: lock.acquire(blocking=False)) is True  # free: allowed


def test_killed_waiter_passes_its_wakeup_on() -> None:
    lock = Lock()
    lock.acquire()
    first = gevent.spawn(lock.acquire, True, PROMPT)
    second = gevent.spawn(lock.acquire, True, PROMPT)
    wait_until(lambda: lock.statistics().waiting == 2, "two greenlets wait")
    # The release commits the wake-up to the first waiter; the kill reaches it first
    # (gevent runs callbacks before it polls for the wake-up).
    lock.release()
    first.kill(block=True)
    assert first.value is not True
    assert second.get(timeout=PROMPT) is True

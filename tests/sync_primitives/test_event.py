"""Event and AsyncResult: flags and results shared by hubs and hub-less threads."""

from __future__ import annotations

import time

import gevent
import pytest

from sync_primitives import AsyncResult, Event, WouldDeadlockError
from tests.conftest import PROMPT, HubThreads, call_in_hub, in_plain_thread, wait_until


def test_event_basics() -> None:
    event = Event()
    assert not event.is_set()
    assert event.wait(0) is False
    event.set()
    assert event.is_set() and event.wait() is True
    event.clear()
    assert not event.is_set()
    assert event.statistics().is_set is False


def test_event_wait_timeout_is_honoured() -> None:
    event = Event()
    for elapsed_of in (
        lambda: gevent.spawn(_timed_wait, event).get(timeout=PROMPT),
        lambda: in_plain_thread(_timed_wait, event).result(PROMPT),
    ):
        assert 0.19 <= elapsed_of() < 1.2
    assert event.statistics().waiting == 0


def _timed_wait(event: Event) -> float:
    started = time.monotonic()
    assert event.wait(0.2) is False
    return time.monotonic() - started


def test_event_waiter_woken_by_set_returns_true_even_if_cleared_at_once(
    hub_threads: HubThreads,
) -> None:
    event = Event()
    remote = hub_threads()
    in_hub = remote.apply_async(event.wait, PROMPT)
    in_plain = in_plain_thread(event.wait, PROMPT)
    wait_until(lambda: event.statistics().waiting == 2, "two waiters")
    event.set()
    event.clear()
    assert in_hub.get(PROMPT) is True
    assert in_plain.result(PROMPT) is True


def test_event_waited_on_by_many_greenlets_in_many_hubs_and_threads(
    hub_threads: HubThreads,
) -> None:
    event = Event()
    hubs = [hub_threads() for _ in range(3)]

    def many_waiters() -> list[bool]:
        return [
            g.get() for g in gevent.joinall([gevent.spawn(event.wait, PROMPT) for _ in range(20)])
        ]

    remote = [hub.apply_async(many_waiters) for hub in hubs]
    plain = [in_plain_thread(event.wait, PROMPT) for _ in range(3)]
    local = [gevent.spawn(event.wait, PROMPT) for _ in range(5)]
    wait_until(lambda: event.statistics().waiting == 3 * 20 + 3 + 5, "68 waiters")
    in_plain_thread(event.set).result(PROMPT)
    assert all(all(r.get(PROMPT)) for r in remote)
    assert all(f.result(PROMPT) for f in plain)
    assert all(g.get(timeout=PROMPT) for g in local)


def test_blocking_wait_in_hub_greenlet_refuses_to_deadlock() -> None:
    event = Event()
    assert isinstance(call_in_hub(lambda: event.wait(1)), WouldDeadlockError)
    event.set()
    assert call_in_hub(lambda: event.wait(1)) is True  # a set event does not block: allowed


def test_async_result_value_and_exception() -> None:
    result: AsyncResult[int] = AsyncResult()
    assert not result.ready() and not result.successful()
    result.set(5)
    assert result.ready() and result.successful() and result.get() == 5
    with pytest.raises(RuntimeError, match="already set"):
        result.set(6)

    failed: AsyncResult[int] = AsyncResult()
    failed.set(KeyError("missing channel"))
    assert failed.ready() and not failed.successful()
    assert isinstance(failed.exception(), KeyError)
    with pytest.raises(KeyError, match="missing channel"):
        gevent.spawn(failed.get).get(timeout=PROMPT)
    with pytest.raises(KeyError, match="missing channel"):
        in_plain_thread(failed.get).result(PROMPT)


def test_async_result_get_timeout_raises_timeout_error() -> None:
    result: AsyncResult[int] = AsyncResult()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.2)
    assert time.monotonic() - started >= 0.19
    assert result.wait(0) is False


def test_async_result_set_from_a_greenlet_of_another_hub_wakes_plain_threads(
    hub_threads: HubThreads,
) -> None:
    result: AsyncResult[str] = AsyncResult()
    getters = [in_plain_thread(result.get, PROMPT) for _ in range(4)]
    wait_until(lambda: result.statistics().waiting == 4, "four getters")
    hub_threads().apply(result.set, "done")
    assert [g.result(PROMPT) for g in getters] == ["done"] * 4

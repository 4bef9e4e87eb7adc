"""The hub port: identity of a thread is its port, never its number; a closing port
leaves no waiter behind."""

from __future__ import annotations

import threading
import time

import gevent
import pytest

from sync_primitives import ClosedError, Launcher, Queue, Thread, WouldDeadlockError
from sync_primitives._hub import current_port
from tests.conftest import PROMPT, HubThreads, in_plain_thread, wait_until

# -- defect 2: a launcher whose thread has ended runs work in the caller's thread ----------


def _launcher_of_ended_thread() -> tuple[Launcher, int]:
    made: list[tuple[Launcher, int]] = []
    thread = threading.Thread(target=lambda: made.append((Launcher(), threading.get_ident())))
    thread.start()
    thread.join(PROMPT)
    assert not thread.is_alive()
    return made[0]


def test_launcher_of_ended_thread_refuses_a_caller_that_reuses_its_thread_ident() -> None:
    launcher, _ = _launcher_of_ended_thread()
    ran_in: list[int] = []

    def attempt() -> BaseException | None:
        # Linux usually gives a new thread the ident of the one that ended last, but not
        # always: make it so, as the port saw it.
        launcher._port.thread_ident = threading.get_ident()
        try:
            launcher.apply(lambda: ran_in.append(threading.get_ident()))
        except ClosedError as exc:
            return exc
        return None

    assert isinstance(in_plain_thread(attempt).result(PROMPT), ClosedError)
    assert ran_in == [], "fn ran in the caller's thread although the launcher's had ended"


def test_thread_of_a_reused_ident_is_not_its_own(hub_threads: HubThreads) -> None:
    thread: Thread = hub_threads()
    thread.stop(timeout=PROMPT)
    port = thread._port
    assert port is not None

    def join_as_if_reused() -> BaseException | None:
        port.thread_ident = threading.get_ident()
        try:
            thread.join(PROMPT)  # its own thread would get WouldDeadlockError
        except WouldDeadlockError as exc:
            return exc
        return None

    assert in_plain_thread(join_as_if_reused).result(PROMPT) is None


def test_launcher_of_ended_thread_refuses_apply_async_from_anywhere() -> None:
    launcher, _ = _launcher_of_ended_thread()
    with pytest.raises(ClosedError, match="has ended"):
        launcher.apply_async(print, "too late")
    with pytest.raises(ClosedError):
        gevent.spawn(launcher.apply, print, "too late").get(timeout=PROMPT)
    assert launcher.statistics().closed


def test_port_is_current_only_in_its_own_thread_and_hub() -> None:
    port = current_port()
    assert port.is_current()
    assert in_plain_thread(port.is_current).result(PROMPT) is False
    other = in_plain_thread(current_port).result(PROMPT)  # that thread has ended since
    assert other.closed
    assert not other.is_current()


# -- a closing port cancels its parked waiters -----------------------------------------------


def test_closing_port_removes_its_parked_waiters_from_every_primitive() -> None:
    first: Queue[int] = Queue()
    second: Queue[int] = Queue(maxsize=1)
    second.put(0)

    def body() -> None:
        for _ in range(3):
            gevent.spawn(first.get)
        gevent.spawn(second.put, 1)
        wait_until(
            lambda: (
                first.statistics().getters_waiting == 3 and second.statistics().putters_waiting == 1
            ),
            "four greenlets sleep",
        )

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(PROMPT)
    assert first.statistics().getters_waiting == 0
    assert second.statistics().putters_waiting == 0
    first.put(1)
    assert first.get_nowait() == 1  # nobody took it


def test_destroyed_hub_refuses_wakeups_and_its_waiters_are_given_up() -> None:
    items: Queue[int] = Queue()
    destroyed, release = threading.Event(), threading.Event()

    def body() -> None:  # a thread that destroys its hub under a waiting greenlet, and lives on
        gevent.spawn(items.get)
        wait_until(lambda: items.statistics().getters_waiting == 1, "the greenlet sleeps")
        gevent.get_hub().destroy(destroy_loop=True)
        destroyed.set()
        release.wait(PROMPT)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert destroyed.wait(PROMPT)

        def timed_get() -> tuple[int, float]:
            started = time.monotonic()
            return items.get(timeout=2.0), time.monotonic() - started

        live = in_plain_thread(timed_get)
        wait_until(lambda: items.statistics().getters_waiting == 2, "the live getter sleeps")
        items.put(1)  # neither raises nor is lost on the destroyed hub
        value, elapsed = live.result(PROMPT)
        assert value == 1
        assert elapsed < 0.5
        wait_until(
            lambda: items.statistics().getters_waiting == 0, "the destroyed hub's waiter is gone"
        )
    finally:
        release.set()
        thread.join(PROMPT)

"""HubTrigger: runs in its creator's hub, coalesces sends, never overlaps, fails loudly."""

from __future__ import annotations

import logging
import threading

import gevent
import pytest

from sync_primitives import ClosedError, Event, HubTrigger, Thread
from tests.conftest import PROMPT, HubThreads, in_plain_thread, wait_until


def test_func_runs_in_the_hub_of_the_creating_thread(hub_threads: HubThreads) -> None:
    remote: Thread = hub_threads()
    ran_in: list[int] = []
    ran = Event()

    def func() -> None:
        ran_in.append(threading.get_ident())
        ran.set()

    trigger, owner_ident = remote.apply(lambda: (HubTrigger(func), threading.get_ident()))
    in_plain_thread(trigger.send).result(PROMPT)
    assert ran.wait(PROMPT)
    assert ran_in == [owner_ident]


def test_sends_while_pending_coalesce_into_one_run() -> None:
    runs: list[int] = []
    trigger = HubTrigger(lambda: runs.append(1))
    for _ in range(1000):  # the main hub does not run while this loop runs
        trigger.send()
    wait_until(lambda: trigger.statistics().runs >= 1 and not trigger.statistics().pending, "a run")
    assert runs == [1]


@pytest.mark.parametrize("blocking", [False, True])
def test_send_during_a_run_causes_one_more_run_and_runs_never_overlap(blocking: bool) -> None:
    state = {"inside": 0, "max_inside": 0, "runs": 0}
    release = gevent.event.Event()

    def func() -> None:
        state["inside"] += 1
        state["max_inside"] = max(state["max_inside"], state["inside"])
        state["runs"] += 1
        if state["runs"] == 1 and not blocking:
            release.wait(PROMPT)  # a non-blocking trigger's function may block
        state["inside"] -= 1

    trigger = HubTrigger(func, blocking=blocking)
    trigger.send()
    wait_until(lambda: state["runs"] == 1, "the first run started")
    for _ in range(10):
        in_plain_thread(trigger.send).result(PROMPT)
    release.set()
    wait_until(lambda: state["runs"] == 2 and not trigger.statistics().running, "the second run")
    assert state["max_inside"] == 1
    assert trigger.statistics().runs == 2


def test_exception_in_func_is_logged_and_trigger_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def func() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad channel")

    trigger = HubTrigger(func)
    with caplog.at_level(logging.ERROR, logger="sync_primitives.trigger"):
        trigger.send()
        wait_until(
            lambda: trigger.statistics().runs == 1 and not trigger.statistics().running, "run"
        )
        trigger.send()
        wait_until(lambda: len(calls) == 2, "second run")
    assert "bad channel" in caplog.text


def test_send_after_close_raises_and_pending_run_is_dropped() -> None:
    runs: list[int] = []
    trigger = HubTrigger(lambda: runs.append(1))
    trigger.send()
    trigger.close()
    with pytest.raises(ClosedError, match="closed"):
        trigger.send()
    # The port fires in order: once a later trigger of this hub has run, so has the fire
    # that close() dropped.
    probe_runs: list[int] = []
    HubTrigger(lambda: probe_runs.append(1), blocking=True).send()
    wait_until(lambda: bool(probe_runs), "a later trigger ran")
    assert runs == []
    assert trigger.statistics().closed


def test_send_to_a_thread_that_ended_raises(hub_threads: HubThreads) -> None:
    remote: Thread = hub_threads()
    trigger = remote.apply(HubTrigger, lambda: None)
    remote.stop(timeout=PROMPT)
    with pytest.raises(ClosedError, match="has ended"):
        trigger.send()

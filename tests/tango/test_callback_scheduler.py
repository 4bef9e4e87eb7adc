"""CallbackScheduler's queues and priorities, with plain callbacks (no Tango yet): one
named test per promise of seed 000's pitfalls 2 and 3."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from nexus_writer.tango import CallbackScheduler
from sync_primitives import Event
from tests.conftest import in_plain_thread, wait_until


@pytest.fixture
def scheduler() -> Iterator[CallbackScheduler]:
    made = CallbackScheduler(workers=1, maxlen=100)
    yield made
    made.shutdown()


def processed(scheduler: CallbackScheduler, count: int) -> None:
    wait_until(
        lambda: sum(s.processed for s in scheduler.statistics()) >= count,
        f"{count} events processed",
    )


def test_a_slow_stream_does_not_starve_a_fast_one(scheduler: CallbackScheduler) -> None:
    order: list[str] = []
    gate = Event()

    def slow(event: str) -> None:
        if event == "a0":
            gate.wait(5)  # hold the worker until every event is queued
        order.append(event)

    scheduler.register("slow", slow)
    scheduler.register("fast", order.append)
    for i in range(5):
        scheduler.post("slow", f"a{i}")
    scheduler.post("fast", "b0")  # behind four slow events in first-come order
    gate.set()
    processed(scheduler, 6)
    assert order == ["a0", "b0", "a1", "a2", "a3", "a4"]


def test_a_full_queue_drops_its_oldest_events(scheduler: CallbackScheduler) -> None:
    small = CallbackScheduler(workers=1, maxlen=3)
    try:
        seen: list[int] = []
        gate = Event()

        def record(event: int) -> None:
            if event == 0:
                gate.wait(5)
            seen.append(event)

        small.register("s", record)
        small.post("s", 0)
        wait_until(lambda: small.statistics()[0].depth == 0, "the first event taken")
        for i in range(1, 6):
            small.post("s", i)
        gate.set()
        processed(small, 4)
        assert seen == [0, 3, 4, 5]
        (stats,) = small.statistics()
        assert (stats.received, stats.processed, stats.dropped) == (6, 4, 2)
    finally:
        small.shutdown()


def test_events_without_a_callback_are_discarded_and_counted(
    scheduler: CallbackScheduler,
) -> None:
    seen: list[str] = []
    scheduler.post("early", "lost")  # subscribed before anyone listens
    scheduler.register("early", seen.append)
    scheduler.post("early", "kept")
    processed(scheduler, 1)
    assert seen == ["kept"]
    (stats,) = scheduler.statistics()
    assert (stats.discarded, stats.received, stats.processed) == (1, 1, 1)
    scheduler.unregister("early")
    scheduler.post("early", "late")
    assert scheduler.statistics()[0].discarded == 2


def test_an_event_keeps_the_callbacks_it_was_posted_with(scheduler: CallbackScheduler) -> None:
    calls: list[tuple[str, str]] = []
    gate = Event()

    def first(event: str) -> None:
        if event == "held":
            gate.wait(5)
        calls.append(("first", event))

    scheduler.register("s", first)
    scheduler.post("s", "held")
    scheduler.post("s", "before")
    scheduler.register("s", lambda event, tag: calls.append((tag, event)), "second")
    scheduler.post("s", "after")
    gate.set()
    processed(scheduler, 3)
    assert calls == [
        ("first", "held"),
        ("first", "before"),
        ("first", "after"),
        ("second", "after"),
    ]


def test_a_raising_callback_is_counted_and_the_others_run(scheduler: CallbackScheduler) -> None:
    seen: list[str] = []

    def broken(event: str) -> None:
        raise ValueError(event)

    scheduler.register("s", broken)
    scheduler.register("s", seen.append)
    scheduler.post("s", "x")
    processed(scheduler, 1)
    assert seen == ["x"]
    assert scheduler.statistics()[0].errors == 1


def test_shutdown_is_idempotent_and_refuses_later_events() -> None:
    made = CallbackScheduler(workers=2)
    made.register("s", lambda event: None)
    made.shutdown()
    made.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        made.post("s", 1)


@pytest.mark.parametrize(
    ("workers", "maxlen", "half_life"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)]
)
def test_bad_settings_are_refused(workers: int, maxlen: int, half_life: float) -> None:
    with pytest.raises(ValueError, match=r"at least 1|positive"):
        CallbackScheduler(workers=workers, maxlen=maxlen, half_life=half_life)


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt, ValueError])
def test_a_callback_that_raises_anything_leaves_its_worker_running(
    scheduler: CallbackScheduler, exception: type[BaseException]
) -> None:
    seen: list[str] = []

    def broken(event: str) -> None:
        if event == "bad":
            raise exception(event)
        seen.append(event)

    scheduler.register("s", broken)
    scheduler.post("s", "bad")
    scheduler.post("s", "good")
    processed(scheduler, 2)
    assert seen == ["good"]
    assert scheduler.statistics()[0].errors == 1


def test_shutdown_from_inside_a_callback_does_not_wait_for_itself() -> None:
    made = CallbackScheduler(workers=2)
    outcome: list[str] = []
    returned = Event()

    def stop_everything(event: object) -> None:
        made.shutdown(timeout=30)  # would wait 30 s for itself, then raise
        outcome.append("shut down")
        returned.set()

    made.register("s", stop_everything)
    made.post("s", 1)
    assert returned.wait(5)
    assert outcome == ["shut down"]
    made.shutdown(timeout=5)  # and from outside: every worker has ended
    assert not any(t.name.startswith("callbacks-") for t in threading.enumerate())


def test_every_shutdown_returns_only_once_the_running_callback_has() -> None:
    made = CallbackScheduler()
    running, release = Event(), Event()
    ended: list[str] = []

    def slow(event: object) -> None:
        running.set()
        release.wait(10)
        ended.append("callback")

    made.register("s", slow)
    made.post("s", 1)
    assert running.wait(5)
    with pytest.raises(TimeoutError, match="did not return"):
        made.shutdown(timeout=0.05)

    def shut_down() -> list[str]:
        made.shutdown(timeout=10)
        return list(ended)  # what had ended when shutdown() returned

    again = in_plain_thread(shut_down)  # waits again, as a retry does
    meanwhile = in_plain_thread(shut_down)  # a second caller meanwhile
    done, _ = concurrent.futures.wait([again, meanwhile], timeout=0.2)
    assert not done  # both still waiting for the callback
    release.set()
    assert again.result(10) == ["callback"]
    assert meanwhile.result(10) == ["callback"]


def test_counts_add_up_after_shutdown() -> None:
    made = CallbackScheduler(maxlen=5)
    gate = Event()
    made.register("s", lambda event: gate.wait(10) if event == 0 else None)
    made.post("s", 0)
    wait_until(lambda: made.statistics()[0].depth == 0, "the first event taken")
    for i in range(1, 9):
        made.post("s", i)
    gate.set()
    made.shutdown()
    (stats,) = made.statistics()
    assert stats.received == 9
    assert stats.received == stats.processed + stats.dropped + stats.cancelled + stats.depth

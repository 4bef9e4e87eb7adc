"""CallbackScheduler's queues and priorities, with plain callbacks (no Tango yet): one
named test per promise of seed 000's pitfalls 2 and 3."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nexus_writer.tango import CallbackScheduler
from sync_primitives import Event
from tests.conftest import wait_until


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

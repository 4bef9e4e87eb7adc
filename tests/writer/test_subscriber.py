"""Subscriber: modes, states, stop and kill, faults, batching and statistics.

The source is a sync_primitives.Queue of batches: a real subclass of Subscriber, fed by
the test (None ends the source).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from nexus_writer.subscriber import Mode, State, Subscriber
from sync_primitives import Empty, Event, Queue, Thread
from tests.conftest import PROMPT, wait_until


class Counting(Subscriber):
    def __init__(self, mode: Mode, **kwargs: Any) -> None:
        super().__init__(f"counting-{mode.value}", mode, **kwargs)
        self.source: Queue[list[int] | None] = Queue()
        self.consumed: list[int] = []
        self.calls: list[list[int]] = []
        self.entered: list[list[int]] = []  # consume() calls begun (before the gate)
        self.threads: set[int] = set()
        self.finished_with: tuple[State, str | None] | None = None
        self.gate: Event | None = None  # when set up, consume waits on it
        self.fail_listen_at: int | None = None
        self.fail_consume_at: int | None = None
        self._ended = False

    def listen(self, timeout: float) -> list[int]:
        try:
            batch = self.source.get(timeout=timeout)
        except Empty:
            return []
        if batch is None:
            self._ended = True
            return []
        if self.fail_listen_at is not None and self.fail_listen_at in batch:
            raise ConnectionError(f"source broke at {self.fail_listen_at}")
        return batch

    def listen_finished(self) -> bool:
        return self._ended

    def consume(self, events: list[int]) -> None:
        self.threads.add(threading.get_ident())
        self.entered.append(list(events))
        if self.gate is not None:
            assert self.gate.wait(PROMPT)
        if self.fail_consume_at is not None and self.fail_consume_at in events:
            raise ValueError(f"cannot consume {self.fail_consume_at}")
        self.calls.append(list(events))
        self.consumed.extend(events)

    def finish(self, state: State, reason: str | None) -> None:
        self.finished_with = (state, reason)


def feed(subscriber: Counting, batches: list[list[int]], end: bool = True) -> None:
    for batch in batches:
        subscriber.source.put(batch)
    if end:
        subscriber.source.put(None)


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_every_event_is_consumed_in_order_in_each_mode(mode: Mode) -> None:
    subscriber = Counting(mode)
    assert subscriber.statistics().state == "INIT" and subscriber.duration() == 0.0
    subscriber.start()
    assert subscriber.statistics().state == "ON"
    feed(subscriber, [list(range(i, i + 10)) for i in range(0, 100, 10)])
    assert subscriber.join(PROMPT)
    assert subscriber.state is State.OFF and subscriber.done()
    assert subscriber.consumed == list(range(100))
    assert subscriber.finished_with == (State.OFF, None)
    stats = subscriber.statistics()
    assert (stats.events_received, stats.events_processed, stats.state) == (100, 100, "OFF")
    main = threading.get_ident()
    assert (subscriber.threads == {main}) is (mode is not Mode.PARALLEL)


def test_parallel_consumers_share_one_consumer_thread() -> None:
    shared = Thread(name="consumers")
    shared.start()
    subscribers = [Counting(Mode.PARALLEL, consumer_thread=shared) for _ in range(3)]
    for subscriber in subscribers:
        subscriber.start()
        feed(subscriber, [[1, 2], [3]])
    for subscriber in subscribers:
        assert subscriber.join(PROMPT) and subscriber.consumed == [1, 2, 3]
    idents = set.union(*(s.threads for s in subscribers))
    assert len(idents) == 1 and idents != {threading.get_ident()}
    assert shared.is_alive()  # not the subscribers' to stop
    shared.stop(timeout=PROMPT)
    with pytest.raises(ValueError, match="only for the parallel mode"):
        Counting(Mode.CONCURRENT, consumer_thread=shared)


@pytest.mark.parametrize("mode", [Mode.CONCURRENT, Mode.PARALLEL], ids=["concurrent", "parallel"])
def test_waiting_batches_are_consumed_together(mode: Mode) -> None:
    subscriber = Counting(mode)
    subscriber.gate = Event()
    subscriber.start()
    feed(subscriber, [[1]], end=False)
    # The consumer holds the first batch (received alone is not enough: in parallel mode it
    # may still wait in the queue, and go with the next ones).
    wait_until(lambda: subscriber.entered == [[1]], "the first batch is being consumed")
    feed(subscriber, [[2], [3], [4]])
    wait_until(lambda: subscriber.statistics().queue_depth >= 3, "three batches wait")
    subscriber.gate.set()
    assert subscriber.join(PROMPT)
    assert subscriber.calls == [[1], [2, 3, 4]]
    assert subscriber.statistics().batches_processed == 2


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_consumer_failure_faults_with_the_reason(mode: Mode) -> None:
    subscriber = Counting(mode)
    subscriber.fail_consume_at = 3
    subscriber.start()
    feed(subscriber, [[1], [2], [3]], end=False)  # no end: the fault must stop the listener
    assert subscriber.join(PROMPT)
    assert subscriber.state is State.FAULT
    assert "cannot consume 3" in (subscriber.statistics().reason or "")
    assert subscriber.finished_with is not None and subscriber.finished_with[0] is State.FAULT


@pytest.mark.parametrize("mode", [Mode.CONCURRENT, Mode.PARALLEL], ids=["concurrent", "parallel"])
def test_listener_failure_faults_but_consumes_what_was_received(mode: Mode) -> None:
    subscriber = Counting(mode)
    subscriber.gate = Event()
    subscriber.fail_listen_at = 99
    subscriber.start()
    feed(subscriber, [[1, 2], [3], [99]], end=False)
    wait_until(lambda: subscriber.statistics().reason is not None, "the listener failed")
    subscriber.gate.set()
    assert subscriber.join(PROMPT)
    assert subscriber.state is State.FAULT
    assert "listener failed: source broke at 99" in (subscriber.statistics().reason or "")
    assert subscriber.consumed == [1, 2, 3]


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_stop_ends_listening_and_keeps_what_was_received(mode: Mode) -> None:
    subscriber = Counting(mode)
    subscriber.start()
    feed(subscriber, [[1], [2]], end=False)
    wait_until(lambda: subscriber.statistics().events_processed == 2, "both are consumed")
    subscriber.stop(wait=True, timeout=PROMPT)
    assert subscriber.state is State.OFF and subscriber.consumed == [1, 2]
    assert subscriber.duration() > 0


@pytest.mark.parametrize("mode", [Mode.CONCURRENT, Mode.PARALLEL], ids=["concurrent", "parallel"])
def test_kill_faults_at_once_and_drops_what_waits(mode: Mode) -> None:
    subscriber = Counting(mode)
    subscriber.gate = Event()
    subscriber.start()
    feed(subscriber, [[1]], end=False)
    # The consumer holds the first batch (stopped at the gate) before the next two come:
    # waiting only for the listener to have it let a slow consumer thread (parallel mode,
    # under coverage) take all three batches at once, and two never waited.
    wait_until(lambda: subscriber.entered == [[1]], "the first batch is being consumed")
    feed(subscriber, [[2], [3]], end=False)
    wait_until(lambda: subscriber.statistics().queue_depth == 2, "two batches wait")
    subscriber.kill()
    subscriber.gate.set()
    assert subscriber.join(PROMPT)
    assert subscriber.state is State.FAULT and subscriber.statistics().reason == "killed"
    assert subscriber.consumed == [1]


def test_join_timeout_start_twice_and_problems() -> None:
    subscriber = Counting(Mode.CONCURRENT)
    assert subscriber.join(0.01) is False  # not started
    subscriber.start()
    assert subscriber.join(0.05) is False
    with pytest.raises(TimeoutError):
        subscriber.join(0.05, raise_timeout=True)
    with pytest.raises(RuntimeError, match="already started"):
        subscriber.start()
    subscriber.degrade("channel x is bad")
    feed(subscriber, [[5]])
    assert subscriber.join(PROMPT)
    assert subscriber.consumed == [5]  # a problem does not stop processing...
    assert subscriber.state is State.FAULT  # ...but the end state says it
    assert subscriber.statistics().reason == "channel x is bad"


def test_on_finish_is_called_once_finished() -> None:
    seen: list[State] = []
    subscriber = Counting(Mode.PARALLEL, on_finish=lambda s: seen.append(s.state))
    subscriber.start()
    feed(subscriber, [[1]])
    assert subscriber.join(PROMPT)
    wait_until(lambda: bool(seen), "on_finish ran")
    assert seen == [State.OFF]

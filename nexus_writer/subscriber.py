"""Subscriber: processes the events of one Redis source with a listener and a consumer.

.. important::
   ``start()`` must be called in a greenlet of a running gevent hub: the listener runs in
   that hub (the "start thread"). The consumer runs there too (sequential, concurrent) or in
   another thread's hub (parallel). ``stop``, ``kill``, ``join``, ``done``, ``duration`` and
   ``statistics`` may be called from any thread.

Modes (seed 004)::

    SEQUENTIAL   one greenlet: listen, consume, listen, consume ...
    CONCURRENT   a listener greenlet and a consumer greenlet in the start hub, and a queue
    PARALLEL     the listener greenlet in the start hub, the consumer greenlet in a
                 sync_primitives.Thread (its own, or one shared by many subscribers), and a
                 cross-thread queue: the consumer's I/O (h5py releases the GIL) overlaps
                 the listener's

The listener puts each read's events into the queue as one batch; the consumer takes every
batch waiting and consumes them together, so that a slow consumer works on larger batches
instead of falling behind. States go INIT -> ON -> OFF (finished, or stopped) or FAULT (an
error, or killed).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from sync_primitives import Empty, Event, Queue, Thread

_log = logging.getLogger(__name__)

#: Seconds a listener waits for events before it looks whether it should stop.
LISTEN_POLL = 0.25
#: Latencies kept for the percentiles of the statistics.
LATENCY_SAMPLES = 1024
_END = object()  # put by the listener when it is done


class Mode(enum.Enum):
    SEQUENTIAL = "sequential"
    CONCURRENT = "concurrent"
    PARALLEL = "parallel"


class State(enum.Enum):
    INIT = "INIT"
    ON = "ON"
    OFF = "OFF"
    FAULT = "FAULT"


@dataclass(frozen=True)
class SubscriberStatistics:
    """A snapshot of a subscriber, shared by the device, the monitor and the benchmarks."""

    name: str
    mode: str
    state: str
    reason: str | None  #: why it is in FAULT
    events_received: int
    events_processed: int
    batches_processed: int
    queue_depth: int  #: batches waiting for the consumer
    processing_time: float  #: seconds the consumer spent consuming
    #: seconds from the publication of the batch's oldest event to processed, last batch
    latency_last: float | None
    latency_max: float | None
    latency_p50: float | None  #: over the last LATENCY_SAMPLES batches
    latency_p99: float | None
    duration: float  #: seconds from start to end (or to now)


class Subscriber:
    """Base class: subclasses implement ``listen``, ``listen_finished`` and ``consume``."""

    def __init__(
        self,
        name: str,
        mode: Mode = Mode.SEQUENTIAL,
        consumer_thread: Thread | None = None,
        on_finish: Callable[[Subscriber], None] | None = None,
    ) -> None:
        """``consumer_thread``: in PARALLEL mode, the running Thread whose hub runs the
        consumer (shared by several subscribers); by default the subscriber starts its own.
        ``on_finish(subscriber)`` is called once it has finished, in the consumer's thread.
        """
        if consumer_thread is not None and mode is not Mode.PARALLEL:
            raise ValueError("a consumer thread is only for the parallel mode")
        self.name = name
        self.mode = mode
        self._consumer_thread = consumer_thread
        self._on_finish = on_finish
        self._own_thread: Thread | None = None
        self._state = State.INIT
        self._reason: str | None = None
        self._problems: list[str] = []
        self._queue: Queue[Any] = Queue()
        self._stop_requested = Event()
        #: Set by stop() and kill(), and by whatever a listener waits for: a listener that
        #: waits on it is woken at once by a stop, without polling.
        self._wake = Event()
        self._killed = False
        self._finished = Event()
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._received = self._processed = self._batches = 0
        self._processing_time = 0.0
        self._latency_last: float | None = None
        self._latency_max: float | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    # -- to implement -----------------------------------------------------------------------

    def listen(self, timeout: float) -> list[Any]:
        """Events that arrived, waiting at most ``timeout`` seconds; [] if none (listener)."""
        raise NotImplementedError

    def listen_finished(self) -> bool:
        """True when the source has nothing more to give (listener)."""
        raise NotImplementedError

    def consume(self, events: list[Any]) -> None:
        """Process events, in order (consumer)."""
        raise NotImplementedError

    def finish(self, state: State, reason: str | None) -> None:
        """Called once in the consumer after the last event, with the final state."""

    def listener_ended(self) -> None:
        """Called once in the listener's greenlet when it stops listening."""

    def publication_time(self, events: list[Any]) -> float | None:
        """When the oldest of ``events`` was published (epoch seconds), if known: for the
        latency."""
        return None

    # -- life cycle -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def start(self, wait: bool = False, timeout: float | None = None) -> None:
        """INIT -> ON: start listening (and consuming).

        Raises:
            RuntimeError: it was started before.
            TimeoutError: ``wait`` and it had not finished within ``timeout`` seconds
                (waiting means: until it is finished).
        """
        if self._state is not State.INIT:
            raise RuntimeError(f"subscriber {self.name!r} was already started")
        self._state = State.ON
        self._started_at = time.monotonic()
        if self.mode is Mode.SEQUENTIAL:
            gevent.spawn(self._run_sequential)
        else:
            gevent.spawn(self._run_listener)
            if self.mode is Mode.CONCURRENT:
                gevent.spawn(self._run_consumer)
            else:
                thread = self._consumer_thread
                if thread is None:
                    thread = self._own_thread = Thread(name=f"{self.name}-consumer")
                    thread.start()
                thread.spawn(self._run_consumer)
        if wait:
            self.join(timeout, raise_timeout=True)

    def stop(self, wait: bool = False, timeout: float | None = None) -> None:
        """ON -> OFF: stop listening; what was received is still consumed.

        Raises:
            TimeoutError: ``wait`` and it had not finished within ``timeout`` seconds.
        """
        self._request_stop()
        if wait:
            self.join(timeout, raise_timeout=True)

    def kill(self, wait: bool = False, timeout: float | None = None) -> None:
        """ON -> FAULT: stop at once; what was received and not yet consumed is dropped.

        Raises:
            TimeoutError: ``wait`` and it had not finished within ``timeout`` seconds.
        """
        self._killed = True
        self._fault("killed")
        self._request_stop()
        if wait:
            self.join(timeout, raise_timeout=True)

    def join(self, timeout: float | None = None, raise_timeout: bool = False) -> bool:
        """Wait until it is finished (OFF or FAULT); False if ``timeout`` passed first.

        Raises:
            TimeoutError: with ``raise_timeout``, instead of returning False.
        """
        if self._state is State.INIT:
            return False
        finished = self._finished.wait(timeout)
        if not finished and raise_timeout:
            raise TimeoutError(f"subscriber {self.name!r} did not finish within {timeout} s")
        return finished

    def done(self) -> bool:
        return self._finished.is_set()

    def duration(self) -> float:
        """Seconds from start to end, or to now while it runs (0 before the start)."""
        if self._started_at is None:
            return 0.0
        return (self._ended_at or time.monotonic()) - self._started_at

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            name=self.name,
            mode=self.mode.value,
            state=self._state.value,
            reason=self._reason,
            events_received=self._received,
            events_processed=self._processed,
            batches_processed=self._batches,
            queue_depth=self._queue.qsize(),
            processing_time=self._processing_time,
            latency_last=self._latency_last,
            latency_max=self._latency_max,
            latency_p50=_percentile(self._latencies, 0.50),
            latency_p99=_percentile(self._latencies, 0.99),
            duration=self.duration(),
        )

    # -- loops ------------------------------------------------------------------------------

    def degrade(self, problem: str) -> None:
        """Record a problem that does not stop processing but makes the end state FAULT
        (a bad channel: the other channels are still written)."""
        self._problems.append(problem)

    def _request_stop(self) -> None:
        """The listener stops: at once, also while it waits on ``_wake``."""
        self._stop_requested.set()
        self._wake.set()

    def _fault(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    def _keep_listening(self) -> bool:
        return not self._stop_requested.is_set() and not self.listen_finished()

    def _listen_once(self) -> list[Any]:
        events = self.listen(LISTEN_POLL)
        self._received += len(events)
        return events

    def _run_sequential(self) -> None:
        try:
            while self._reason is None and self._keep_listening():
                events = self._listen_once()
                if events:
                    self._consume_timed(events)
        except Exception as exc:
            self._fault_from(exc, "failed")
        self._listener_ended()
        self._end()

    def _run_listener(self) -> None:
        try:
            while self._reason is None and self._keep_listening():
                events = self._listen_once()
                if events:
                    self._queue.put(events)
        except Exception as exc:
            self._fault_from(exc, "listener failed")
        finally:
            self._listener_ended()
            self._queue.put(_END)

    def _listener_ended(self) -> None:
        try:
            self.listener_ended()
        except Exception:
            _log.exception("subscriber %r: listener_ended failed", self.name)

    def _run_consumer(self) -> None:
        ended = False
        try:
            while not ended:
                batch = self._queue.get()
                events: list[Any] = []
                while True:  # everything waiting goes into one consume
                    if batch is _END:
                        ended = True
                        break
                    events.extend(batch)
                    try:
                        batch = self._queue.get_nowait()
                    except Empty:
                        break
                # After a listener fault, what it received is still consumed: lose nothing.
                if events and not self._killed:
                    self._consume_timed(events)
        except Exception as exc:
            self._fault_from(exc, "consumer failed")
            self._request_stop()
            while not ended:  # the listener stops at its next poll; its last batches go
                ended = self._queue.get() is _END
        self._end()

    def _consume_timed(self, events: list[Any]) -> None:
        started = time.monotonic()
        self.consume(events)
        now = time.monotonic()
        self._processing_time += now - started
        self._processed += len(events)
        self._batches += 1
        published = self.publication_time(events)
        if published is not None:
            latency = max(0.0, time.time() - published)
            self._latency_last = latency
            self._latency_max = max(latency, self._latency_max or 0.0)
            self._latencies.append(latency)

    def _fault_from(self, exc: Exception, what: str) -> None:
        _log.error("subscriber %r: %s: %s", self.name, what, exc, exc_info=exc)
        self._fault(f"{what}: {exc}")

    def _problems_summary(self) -> str | None:
        """The end reason that the problems make (the first, and how many more)."""
        if not self._problems:
            return None
        more = len(self._problems) - 1
        return self._problems[0] + (f" (and {more} more problems)" if more else "")

    def _end(self) -> None:
        if self._reason is None:
            self._reason = self._problems_summary()
        state = State.FAULT if self._reason is not None else State.OFF
        try:
            self.finish(state, self._reason)
        except Exception as exc:
            self._fault_from(exc, "finishing failed")
            state = State.FAULT
        self._state = state
        self._ended_at = time.monotonic()
        self._finished.set()
        if self._on_finish is not None:
            try:
                self._on_finish(self)
            except Exception:
                _log.exception("subscriber %r: on_finish failed", self.name)
        if self._own_thread is not None:
            self._own_thread.stop(wait=False)
        log: Callable[..., None] = _log.info if state is State.OFF else _log.warning
        log(
            "subscriber %r: %s after %.3f s%s",
            self.name,
            state.value,
            self.duration(),
            f" ({self._reason})" if self._reason else "",
        )


def _percentile(samples: deque[float], fraction: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

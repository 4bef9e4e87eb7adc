"""CallbackScheduler: event callbacks run by workers, one queue per event stream, fairly.

.. important::
   :meth:`CallbackScheduler.post` may be called from any thread (a Tango event callback,
   in the event consumer thread: it only enqueues, never waits); callbacks run in the
   scheduler's worker :class:`~sync_primitives.Thread` s, one at a time per worker;
   ``register``, ``unregister``, ``statistics`` and ``shutdown`` may be called from any
   thread.

Seed 000's pitfalls 2 and 3, answered here (the Tango subscriptions come next, issue 10):

* Each event stream has a bounded queue of its own; when it is full the *oldest* event
  is dropped and counted: a slow consumer sees the newest state, and knows it missed some.
* Queues are served by priority: the next event comes from the queue, among those with
  events waiting, whose callbacks used the least processing time recently (a sum that
  halves every ``half_life`` seconds). A stream whose callback is slow yields to the
  others; none starves another, as the first-come order of one shared queue does.
* An event is queued together with the callbacks registered when it arrived, so callbacks
  can be added or replaced while events flow, without stopping the workers; events of a
  stream with no callback are discarded and counted (pre-subscription).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync_primitives import Lock, Queue, Thread

_log = logging.getLogger(__name__)

#: Samples kept per queue for the percentiles of latency and processing time.
SAMPLES = 1024
_STOP = object()


@dataclass(frozen=True)
class StreamStatistics:
    """One stream's queue, as plain data."""

    stream: str
    received: int  #: events posted while a callback was registered
    processed: int  #: events whose callbacks have run
    dropped: int  #: oldest events dropped from a full queue
    discarded: int  #: events posted while no callback was registered
    errors: int  #: callbacks that raised
    depth: int  #: events waiting
    latency_p50: float | None  #: seconds from the event's time to its callbacks' start
    latency_p99: float | None
    processing_p50: float | None  #: seconds its callbacks took
    processing_p99: float | None
    processing_total: float


class _Stream:
    """The queue of one stream and what the scheduler knows of it (under the scheduler's
    lock)."""

    def __init__(self, name: str, maxlen: int) -> None:
        self.name = name
        self.events: deque[tuple[Any, float, tuple[Callable[..., object], ...]]] = deque(
            maxlen=maxlen
        )
        self.callbacks: tuple[Callable[..., object], ...] = ()
        self.cost = 0.0  #: recent processing time, decayed
        self.cost_at = time.monotonic()
        self.received = self.processed = self.dropped = self.discarded = self.errors = 0
        self.total = 0.0
        self.latencies: deque[float] = deque(maxlen=SAMPLES)
        self.durations: deque[float] = deque(maxlen=SAMPLES)

    def decayed(self, now: float, half_life: float) -> float:
        return float(self.cost * 0.5 ** ((now - self.cost_at) / half_life))


class CallbackScheduler:
    """Runs the callbacks of posted events in ``workers`` threads of its own."""

    def __init__(self, workers: int = 1, maxlen: int = 100, half_life: float = 1.0) -> None:
        """Raises:
        ValueError: ``workers`` or ``maxlen`` below 1, ``half_life`` not positive.
        """
        if workers < 1 or maxlen < 1 or not half_life > 0:
            raise ValueError("workers and maxlen must be at least 1, half_life positive")
        self.maxlen = maxlen
        self.half_life = half_life
        self._lock = Lock()
        self._streams: dict[str, _Stream] = {}
        self._tokens: Queue[object] = Queue()  # one per event queued: wakes a worker
        self._closed = False
        self._workers = [Thread(name=f"callbacks-{i}") for i in range(workers)]
        for worker in self._workers:
            worker.start()
            worker.spawn(self._work)

    # -- any thread ---------------------------------------------------------------------

    def register(self, stream: str, fn: Callable[..., object], *args: Any) -> None:
        """Add ``fn(event, *args)`` to the callbacks of ``stream``: events posted from now
        on are given to it (those already queued keep the callbacks they came with)."""
        callback: Callable[..., object] = (lambda event: fn(event, *args)) if args else fn
        with self._lock:
            stream_ = self._stream(stream)
            stream_.callbacks = (*stream_.callbacks, callback)

    def unregister(self, stream: str) -> None:
        """Remove every callback of ``stream``: later events are discarded (counted)."""
        with self._lock:
            self._stream(stream).callbacks = ()

    def post(self, stream: str, event: Any, event_time: float | None = None) -> None:
        """Queue ``event`` of ``stream`` (``event_time``: when it happened, epoch seconds,
        for the latency; default now). Never waits.

        Raises:
            RuntimeError: the scheduler was shut down.
        """
        stamp = time.time() if event_time is None else event_time
        with self._lock:
            if self._closed:
                raise RuntimeError("the callback scheduler was shut down")
            stream_ = self._stream(stream)
            if not stream_.callbacks:
                stream_.discarded += 1
                return
            stream_.received += 1
            if len(stream_.events) == self.maxlen:
                stream_.dropped += 1  # the deque drops the oldest; its token finds nothing
            stream_.events.append((event, stamp, stream_.callbacks))
        self._tokens.put(None)

    def statistics(self) -> list[StreamStatistics]:
        with self._lock:
            return [
                StreamStatistics(
                    stream=s.name,
                    received=s.received,
                    processed=s.processed,
                    dropped=s.dropped,
                    discarded=s.discarded,
                    errors=s.errors,
                    depth=len(s.events),
                    latency_p50=_percentile(s.latencies, 0.5),
                    latency_p99=_percentile(s.latencies, 0.99),
                    processing_p50=_percentile(s.durations, 0.5),
                    processing_p99=_percentile(s.durations, 0.99),
                    processing_total=s.total,
                )
                for s in self._streams.values()
            ]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers once the callbacks running now return; events still queued
        are dropped. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for stream_ in self._streams.values():
                stream_.events.clear()
        for _ in self._workers:
            self._tokens.put(_STOP)
        for worker in self._workers:
            worker.stop(timeout=timeout)

    # -- workers ------------------------------------------------------------------------

    def _stream(self, name: str) -> _Stream:
        stream_ = self._streams.get(name)
        if stream_ is None:
            stream_ = self._streams[name] = _Stream(name, self.maxlen)
        return stream_

    def _work(self) -> None:
        while self._tokens.get() is not _STOP:
            taken = self._take()
            if taken is not None:
                self._run(*taken)

    def _take(self) -> tuple[_Stream, Any, float, tuple[Callable[..., object], ...]] | None:
        """The next event: from the queue whose callbacks used the least time recently
        (the oldest event first on a tie)."""
        now = time.monotonic()
        with self._lock:
            ready = [s for s in self._streams.values() if s.events]
            if not ready:
                return None  # its event was dropped from a full queue
            best = min(ready, key=lambda s: (s.decayed(now, self.half_life), s.events[0][1]))
            event, stamp, callbacks = best.events.popleft()
            return best, event, stamp, callbacks

    def _run(
        self,
        stream: _Stream,
        event: Any,
        stamp: float,
        callbacks: tuple[Callable[..., object], ...],
    ) -> None:
        latency = max(0.0, time.time() - stamp)
        started = time.monotonic()
        errors = 0
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                errors += 1
                _log.exception("callback of stream %s raised", stream.name)
        ended = time.monotonic()
        with self._lock:
            stream.cost = stream.decayed(ended, self.half_life) + (ended - started)
            stream.cost_at = ended
            stream.processed += 1
            stream.errors += errors
            stream.total += ended - started
            stream.latencies.append(latency)
            stream.durations.append(ended - started)


def _percentile(samples: deque[float], fraction: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

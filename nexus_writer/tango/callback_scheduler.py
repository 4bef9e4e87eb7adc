"""CallbackScheduler: event callbacks run by workers, one queue per event stream, fairly.

.. important::
   :meth:`CallbackScheduler.post` and the Tango callbacks of its subscriptions may run in
   any thread (Tango's event consumer thread, typically): they only queue, never wait.
   Callbacks run in the scheduler's workers, one at a time per worker: ``workers`` OS
   threads of its own (:class:`~sync_primitives.Thread`), or, with ``in_hub=True``, as many
   greenlets of the hub of the thread that created the scheduler (a green-mode device's
   hub: its callbacks may then push Tango events). Subscriptions are made and ended in
   ``subscribers`` threads of the scheduler's own. Every other method may be called from
   any thread or greenlet.

Seed 000's pitfalls, and the answer of each (the Tango side is in ``subscription.py``):

1. *One event consumer thread per process*: a Tango callback only queues the event.
2. *Ad-hoc queues*: each event stream has a bounded queue of its own (or a queue shared
   with the streams given the same ``queue`` name); when it is full the *oldest* event is
   dropped and counted: a slow consumer sees the newest state, and knows it missed some.
3. *First-come service*: the next event comes from the queue, among those with events
   waiting, whose callbacks used the least processing time recently (a sum that halves
   every ``half_life`` seconds). A stream whose callback is slow yields to the others.
4. *Subscriptions block*: they are made in subscriber threads, several at once, while
   events flow; an event is queued together with the callbacks registered when it
   arrived, so callbacks can be added or replaced without stopping anything; events of a
   stream with no callback are discarded and counted (pre-subscription).
5. *Proxies that unsubscribe when collected*: the scheduler owns its proxies;
   :meth:`~CallbackScheduler.unsubscribe` and :meth:`~CallbackScheduler.shutdown` end them.
6. *Undefined devices*: subscribing by name retries until the device is defined.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import tango
from gevent import getcurrent
from gevent.monkey import get_original

from sync_primitives import AsyncResult, ClosedError, Launcher, Lock, Queue, Thread

from .subscription import (
    Subscription,
    SubscriptionState,
    SubscriptionStatistics,
    stream_name,
)
from .summary import Summary, summarize

_log = logging.getLogger(__name__)
#: The native lock of ``_thread``, also after ``gevent.monkey.patch_all()``.
allocate_native_lock = get_original("_thread", "allocate_lock")

#: Samples kept per queue for the percentiles of latency and processing time.
SAMPLES = 1024
#: The attribute name under which a device shows its scheduler's statistics (JSON of
#: :meth:`CallbackScheduler.statistics_json`); the event monitor reads it when present.
STATISTICS_ATTRIBUTE = "CallbackSchedulerStatistics"

_Callbacks = tuple[Callable[[Any], object], ...]


@dataclass(frozen=True)
class QueueStatistics:
    """One queue (by default one stream), as plain data; times in seconds."""

    queue: str
    received: int  #: events queued (posted while a callback was registered)
    processed: int  #: events whose callbacks have run
    dropped: int  #: oldest events dropped from a full queue
    discarded: int  #: events posted while no callback was registered
    cancelled: int  #: events queued, then removed by unsubscribe() or shutdown()
    errors: int  #: callbacks that raised
    depth: int  #: events waiting
    latency: Summary | None  #: from the event's time to its callbacks' start
    processing: Summary | None  #: how long its callbacks took, per event
    processing_total: float


class _Queue:
    """One queue and what the scheduler knows of it (under the scheduler's lock)."""

    def __init__(self, name: str, maxlen: int) -> None:
        self.name = name
        # (event, its time, its callbacks, the subscription it came from or None)
        self.events: deque[tuple[Any, float, _Callbacks, Subscription | None]] = deque(
            maxlen=maxlen
        )
        self.cost = 0.0  #: recent processing time, decayed
        self.cost_at = time.monotonic()
        self.received = self.processed = self.dropped = self.discarded = self.errors = 0
        self.cancelled = 0
        self.total = 0.0
        self.latencies: deque[float] = deque(maxlen=SAMPLES)
        self.durations: deque[float] = deque(maxlen=SAMPLES)

    def decayed(self, now: float, half_life: float) -> float:
        return float(self.cost * 0.5 ** ((now - self.cost_at) / half_life))


class CallbackScheduler:
    """Runs event callbacks in workers of its own; see the module documentation."""

    def __init__(
        self,
        workers: int = 1,
        maxlen: int = 100,
        half_life: float = 1.0,
        *,
        in_hub: bool = False,
        subscribers: int = 4,
        retry_period: float = 1.0,
    ) -> None:
        """``workers`` run callbacks (threads, or greenlets of this thread's hub with
        ``in_hub``); ``maxlen`` bounds each queue; ``subscribers`` threads make and end
        Tango subscriptions (started at the first :meth:`subscribe`); a device not yet
        defined is tried again every ``retry_period`` seconds.

        Raises:
            ValueError: ``workers``, ``maxlen`` or ``subscribers`` below 1, ``half_life``
                or ``retry_period`` not positive.
        """
        if workers < 1 or maxlen < 1 or subscribers < 1:
            raise ValueError("workers, maxlen and subscribers must be at least 1")
        if not (half_life > 0 and retry_period > 0):
            raise ValueError("half_life and retry_period must be positive")
        self.maxlen = maxlen
        self.half_life = half_life
        self.retry_period = retry_period
        # A native lock, not sync_primitives.Lock: contention between the thread posting and
        # the workers stays cheap (a hub-aware lock cost about 80 us per event here under a
        # full-speed producer). The invariant that makes it safe: it is held for a few
        # microseconds, never across a callback or anything that blocks or yields to a
        # hub (starting a thread does: see _subscriber). A greenlet that yielded while
        # holding it would block its whole hub at the next greenlet that takes it.
        self._lock = allocate_native_lock()
        self._queues: dict[str, _Queue] = {}
        self._queue_of: dict[str, str] = {}  # stream -> queue, for post()
        self._callbacks: dict[str, _Callbacks] = {}  # stream -> callbacks, for post()
        self._subscriptions: list[Subscription] = []
        # Wake-ups: a worker with nothing to do counts itself idle and waits for a token;
        # whoever queues an event while a worker is idle gives one token (and uncounts it).
        # A busy worker takes the next event without waiting, so a burst costs one wake-up.
        self._tokens: Queue[None] = Queue()
        self._idle = 0
        self._closed = False
        self._subscriber_count = subscribers
        self._subscribers: list[Thread] = []  # under _subscribers_lock
        self._subscribers_lock = Lock()
        self._load: dict[Thread, int] = {}  # subscriber -> subscriptions it runs
        self._assigned: dict[Subscription, Thread] = {}
        self._worker_greenlets: dict[object, int] = {}  # a running worker's greenlet -> index
        self._releases: list[AsyncResult[None]] = []  # shutdown's unsubscriptions
        # Per worker: wait(timeout) -> whether it has ended. A worker ends when it finds the
        # scheduler closed and nothing to run; a thread worker's thread ends with it.
        self._worker_ended: list[Callable[[float | None], bool]] = []
        if in_hub:
            launcher = Launcher()
            for i in range(workers):
                self._worker_ended.append(launcher.apply_async(self._work, i).wait)
        else:
            for i in range(workers):
                thread = Thread(target=self._work, args=(i,), name=f"callbacks-{i}")
                thread.start()
                self._worker_ended.append(partial(_joined, thread))

    # -- callbacks for events posted by the program ---------------------------------------

    def register(
        self, stream: str, fn: Callable[..., object], *args: Any, queue: str | None = None
    ) -> None:
        """Add ``fn(event, *args)`` to the callbacks of ``stream``: events posted from now
        on are given to it (those already queued keep the callbacks they came with).
        ``queue``: the queue the stream's events wait in (default: one of its own); set by
        the first call that names one."""
        callback = _bind(fn, args)
        with self._lock:
            self._queue_of.setdefault(stream, queue or stream)
            self._callbacks[stream] = (*self._callbacks.get(stream, ()), callback)

    def unregister(self, stream: str) -> None:
        """Remove every callback of ``stream``: later events are discarded (counted)."""
        with self._lock:
            self._callbacks.pop(stream, None)

    def post(self, stream: str, event: Any, event_time: float | None = None) -> None:
        """Queue ``event`` of ``stream`` (``event_time``: when it happened, epoch seconds,
        for the latency; default now). Never waits.

        Raises:
            RuntimeError: the scheduler was shut down.
        """
        stamp = time.time() if event_time is None else event_time
        with self._lock:
            callbacks = self._callbacks.get(stream, ())
            wake = self._enqueue_locked(
                self._queue_of.get(stream, stream), event, stamp, callbacks, None
            )
        if wake:
            self._tokens.put(None)

    # -- Tango subscriptions ----------------------------------------------------------------

    def subscribe(
        self,
        device: str,
        attribute: str,
        event_type: tango.EventType,
        fn: Callable[..., object] | None = None,
        *args: Any,
        queue: str | None = None,
        sub_mode: tango.EventSubMode = tango.EventSubMode.Stateless,
    ) -> Subscription:
        """Subscribe to ``event_type`` events of ``device``/``attribute`` (device by name or
        full TRL); ``fn(event, *args)``, if given, is its first callback (more with
        :meth:`add_callback`; without one, events are discarded and counted until one is
        added). Returns at once: the subscription is made in a subscriber thread, retried
        while the device is not defined; ``Subscription.wait()`` waits for it.
        ``queue``: the queue its events wait in (default: one per stream); ``sub_mode``:
        Tango's subscription mode (default Stateless: a device or attribute that does not
        answer yet is subscribed to anyway, and error events arrive until it does).

        Raises:
            RuntimeError: the scheduler was shut down.
        """
        thread = self._subscriber()
        with self._lock:
            if self._closed:
                raise RuntimeError("the callback scheduler was shut down")
            subscription = Subscription(
                self,
                device=device,
                attribute=attribute,
                event_type=event_type,
                queue=queue or stream_name(device, attribute, event_type),
                sub_mode=sub_mode,
                retry_period=self.retry_period,
            )
            if fn is not None:
                subscription.callbacks = (_bind(fn, args),)
            self._subscriptions.append(subscription)
            self._load[thread] += 1
            self._assigned[subscription] = thread
        thread.spawn(subscription.run)
        return subscription

    def add_callback(
        self, subscription: Subscription, fn: Callable[..., object], *args: Any
    ) -> None:
        """Give the subscription's later events to ``fn(event, *args)`` too."""
        callback = _bind(fn, args)
        with self._lock:
            subscription.callbacks = (*subscription.callbacks, callback)

    def set_callback(
        self, subscription: Subscription, fn: Callable[..., object] | None, *args: Any
    ) -> None:
        """Replace the subscription's callbacks by ``fn(event, *args)`` (None: by none, so
        that its later events are discarded and counted)."""
        with self._lock:
            subscription.callbacks = () if fn is None else (_bind(fn, args),)

    def unsubscribe(self, subscription: Subscription) -> AsyncResult[None]:
        """End one subscription: its events still queued are cancelled (counted), no
        callback of it starts after this returns, and Tango's subscription and proxy are
        ended in a subscriber thread, which the returned result waits for. Idempotent."""
        with self._lock:
            self._forget_locked(subscription)
            thread = self._assigned.pop(subscription, None)
            if thread is not None:
                self._load[thread] -= 1
        subscription.end()
        if thread is None:  # already ended
            done: AsyncResult[None] = AsyncResult()
            done.set(None)
            return done
        return thread.apply_async(subscription.release)

    def subscriptions(self) -> list[SubscriptionStatistics]:
        with self._lock:
            return [s.statistics() for s in self._subscriptions]

    # -- statistics and the end -----------------------------------------------------------

    def statistics(self) -> list[QueueStatistics]:
        """One entry per queue, in the order the queues were first used."""
        with self._lock:
            queues = [
                (
                    q.name,
                    q.received,
                    q.processed,
                    q.dropped,
                    q.discarded,
                    q.cancelled,
                    q.errors,
                    len(q.events),
                    list(q.latencies),
                    list(q.durations),
                    q.total,
                )
                for q in self._queues.values()
            ]
        return [  # sorting the samples outside the lock keeps post() prompt
            QueueStatistics(
                queue=name,
                received=received,
                processed=processed,
                dropped=dropped,
                discarded=discarded,
                cancelled=cancelled,
                errors=errors,
                depth=depth,
                latency=summarize(latencies),
                processing=summarize(durations),
                processing_total=total,
            )
            for (
                name,
                received,
                processed,
                dropped,
                discarded,
                cancelled,
                errors,
                depth,
                latencies,
                durations,
                total,
            ) in queues
        ]

    def statistics_json(self) -> str:
        """:meth:`statistics` and :meth:`subscriptions` as JSON (for the attribute named
        :data:`STATISTICS_ATTRIBUTE`, which the event monitor shows)."""
        return json.dumps(
            {
                "version": 1,
                "queues": [asdict(s) for s in self.statistics()],
                "subscriptions": [asdict(s) for s in self.subscriptions()],
            }
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        """End every subscription (unsubscribing, letting go of every proxy), drop the
        events still queued (counted in ``cancelled``), stop the workers once the callbacks
        running now return, stop the subscriber threads.

        Every call returns once all that is done, also a second call made meanwhile, or a
        call after one that timed out. Called from one of the scheduler's own callbacks,
        it does not wait for that callback (which would never return): its worker ends
        when the callback returns.

        Raises:
            TimeoutError: a callback, or an unsubscription, did not end within ``timeout``
                seconds (each); calling again waits again.
        """
        with self._lock:
            subscriptions = []
            if not self._closed:
                self._closed = True
                subscriptions = list(self._assigned.items())
                self._assigned.clear()
                for queue in self._queues.values():
                    queue.cancelled += len(queue.events)
                    queue.events.clear()
            own = self._worker_greenlets.get(getcurrent())
        for subscription, thread in subscriptions:
            subscription.end()
            try:
                self._releases.append(thread.apply_async(subscription.release))
            except ClosedError:
                # Its thread has ended (the process is ending): unsubscribe here. Left to
                # the garbage collector, the proxy could be freed while Tango's event thread
                # calls its callback (docs/tango-events.md, pitfall 5).
                _log.info("%s: its subscriber thread has ended; unsubscribing here", subscription)
                try:
                    subscription.release()
                except Exception:  # the others are ended all the same
                    _log.exception("unsubscribing from %s", subscription.stream)
        for _ in self._worker_ended:  # a token for each worker that may be waiting
            self._tokens.put(None)
        for release in self._releases:
            if not release.wait(timeout):
                raise TimeoutError(f"unsubscribing did not end within {timeout} s")
        for i, ended in enumerate(self._worker_ended):
            if i != own and not ended(timeout):
                raise TimeoutError(f"a callback did not return within {timeout} s")
        with self._subscribers_lock:  # none is started after this: _closed is set
            for thread in self._subscribers:
                thread.stop(timeout=timeout)

    # -- the Tango side: any thread -----------------------------------------------------

    def enqueue(self, subscription: Subscription, event: Any, stamp: float) -> None:
        """Queue ``event`` of ``subscription`` with its callbacks (its Tango callback)."""
        with self._lock:
            wake = not self._closed and self._enqueue_locked(
                subscription.queue, event, stamp, subscription.callbacks, subscription
            )
        if wake:
            self._tokens.put(None)

    # -- internals ------------------------------------------------------------------------

    def _enqueue_locked(  # True: the caller must give a worker a token
        self,
        name: str,
        event: Any,
        stamp: float,
        callbacks: _Callbacks,
        source: Subscription | None,
    ) -> bool:
        if self._closed:
            raise RuntimeError("the callback scheduler was shut down")
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name, self.maxlen)
        if not callbacks:
            queue.discarded += 1
            return False
        queue.received += 1
        if len(queue.events) == self.maxlen:
            queue.dropped += 1  # the deque drops the oldest
        queue.events.append((event, stamp, callbacks, source))
        if self._idle:  # wake one waiting worker (the caller puts its token)
            self._idle -= 1
            return True
        return False

    def _forget_locked(self, subscription: Subscription) -> None:
        subscription.callbacks = ()
        queue = self._queues.get(subscription.queue)
        if queue is not None:
            kept = [entry for entry in queue.events if entry[3] is not subscription]
            queue.cancelled += len(queue.events) - len(kept)
            queue.events.clear()
            queue.events.extend(kept)

    def _subscriber(self) -> Thread:
        """The least busy subscriber thread, started on first need.

        Raises:
            RuntimeError: the scheduler was shut down.
        """
        with self._subscribers_lock:  # starting a thread waits (and may yield to a hub)
            if self._closed:
                raise RuntimeError("the callback scheduler was shut down")
            if len(self._subscribers) < self._subscriber_count:
                thread = Thread(name=f"tango-subscriber-{len(self._subscribers)}")
                thread.start()
                with self._lock:
                    self._load[thread] = 0
                self._subscribers.append(thread)
            with self._lock:
                return min(self._subscribers, key=lambda t: self._load[t])

    def _work(self, index: int) -> None:
        with self._lock:
            self._worker_greenlets[getcurrent()] = index
        done: tuple[_Queue, float, float, float, int] | None = None
        while True:
            with self._lock:
                if done is not None:
                    self._account_locked(*done)
                    done = None
                taken = self._take_locked()
                if taken is None:
                    if self._closed:
                        del self._worker_greenlets[getcurrent()]
                        return
                    self._idle += 1
            if taken is None:
                self._tokens.get()
            else:
                done = self._run(*taken)

    def _take_locked(self) -> tuple[_Queue, Any, float, _Callbacks, Subscription | None] | None:
        """The next event: from the queue whose callbacks used the least time recently
        (the oldest event first on a tie); None if no queue has one."""
        ready = [q for q in self._queues.values() if q.events]
        if not ready:
            return None
        if len(ready) == 1:
            best = ready[0]
        else:
            now = time.monotonic()
            best = min(ready, key=lambda q: (q.decayed(now, self.half_life), q.events[0][1]))
        return (best, *best.events.popleft())

    def _run(
        self,
        queue: _Queue,
        event: Any,
        stamp: float,
        callbacks: _Callbacks,
        source: Subscription | None,
    ) -> tuple[_Queue, float, float, float, int]:
        """Run the event's callbacks; what _account_locked records of it."""
        latency = max(0.0, time.time() - stamp)
        started = time.monotonic()
        errors = 0
        for callback in callbacks:
            if source is not None and source.state is SubscriptionState.ENDED:
                break  # unsubscribed while this event was being taken
            try:
                callback(event)
            except (Exception, SystemExit, KeyboardInterrupt):  # not GreenletExit: stop()
                errors += 1
                _log.exception("callback of queue %s raised", queue.name)
        return queue, latency, started, time.monotonic(), errors

    def _account_locked(
        self, queue: _Queue, latency: float, started: float, ended: float, errors: int
    ) -> None:
        queue.cost = queue.decayed(ended, self.half_life) + (ended - started)
        queue.cost_at = ended
        queue.processed += 1
        queue.errors += errors
        queue.total += ended - started
        queue.latencies.append(latency)
        queue.durations.append(ended - started)


def _joined(thread: Thread, timeout: float | None) -> bool:
    try:
        thread.join(timeout)
    except TimeoutError:
        return False
    return True


def _bind(fn: Callable[..., object], args: tuple[Any, ...]) -> Callable[[Any], object]:
    return (lambda event: fn(event, *args)) if args else fn

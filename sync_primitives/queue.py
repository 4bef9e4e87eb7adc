"""Queue: a FIFO shared by producers and consumers in any threads, hubs and greenlets.

.. important::
   A queue belongs to no thread. ``put*`` and ``get*`` may be called from greenlets of any
   hub and from threads without a hub, all at once. A blocked greenlet yields to its own hub;
   a hub-less thread blocks natively. Non-blocking calls (``put_nowait``, ``get_nowait``,
   ``qsize``...) are also allowed in a hub greenlet; blocking ones are refused there
   (:class:`~sync_primitives.WouldDeadlockError`).

It raises the standard library's :class:`queue.Empty` and :class:`queue.Full`, so code
written for :class:`queue.Queue` keeps its ``except`` clauses.

The hot paths take no Python-level lock
---------------------------------------
``deque.append`` and ``deque.popleft`` are atomic under the GIL. An unbounded ``put`` is an
append followed by a look at the list of sleeping getters; a ``get`` that finds an item is a
single ``popleft``. A getter that finds nothing registers its waiter under the mutex and then
tries ``popleft`` once more before sleeping. The putter appends *before* it looks for
getters, so either that second try finds the item or the putter sees the waiter: a wake-up
cannot be lost. A bounded queue checks its size under the mutex (two putters must not both
take the last free place); getters only make the queue shorter, so they still need no mutex,
and afterwards wake a sleeping putter in the same register-then-retry way.

A woken getter that finds the queue empty again (a ``get_nowait`` took the item first)
goes back to the *front* of the getters: it does not lose its turn. Time-outs are checked
before any fast path, whatever the queue holds: with ``block=True`` a negative or NaN one is
a ValueError; with ``block=False`` it is ignored, as :class:`queue.Queue` ignores it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from queue import Empty, Full
from typing import Generic, TypeVar

from ._fork import RENEW, RESUME, track
from ._hub import allocate_native_lock
from ._waiter import (
    Waiter,
    deadline_after,
    expired,
    renew_after_fork,
    sleep,
    wait_timeout,
    wake_one,
)

T = TypeVar("T")

__all__ = ["Empty", "Full", "Queue", "QueueStatistics"]


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a :class:`Queue`."""

    qsize: int
    maxsize: int
    getters_waiting: int
    putters_waiting: int


class Queue(Generic[T]):
    """A FIFO queue; ``maxsize <= 0`` means unbounded.

    ``put/get(block=True, timeout=None)``, ``put_nowait/get_nowait``, ``qsize()``, ``empty()``
    and ``full()`` as in :class:`queue.Queue`.
    """

    __slots__ = ("__weakref__", "_getters", "_items", "_maxsize", "_mutex", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = max(0, maxsize)
        self._items: deque[T] = deque()
        self._mutex = allocate_native_lock()
        self._getters: deque[Waiter] = deque()
        self._putters: deque[Waiter] = deque()
        track(self)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Append ``item``, waiting for a free place in a bounded queue.

        Raises:
            queue.Full: no place became free (at once when ``block`` is False, else within
                ``timeout`` seconds).
            WouldDeadlockError: a blocking put in a hub greenlet while the queue is full.
            ValueError: ``block`` and ``timeout`` is negative or NaN.
            OverflowError: ``timeout`` is larger than ``threading.TIMEOUT_MAX``.
            TypeError: ``timeout`` is not a number.
        """
        if timeout is not None and block:
            timeout = wait_timeout(timeout)
        if not self._maxsize:
            self._items.append(item)
            if self._getters:
                self._wake_getter()
            return
        with self._mutex:
            if len(self._items) >= self._maxsize:
                if not block:
                    raise Full
                deadline = deadline_after(timeout)
                woken = False
                while len(self._items) >= self._maxsize:
                    if expired(deadline):
                        raise Full
                    woken = sleep(self._mutex, self._putters, deadline, self._has_room, first=woken)
            self._items.append(item)
            wake_one(self._getters)

    def put_nowait(self, item: T) -> None:
        """``put(item, block=False)``."""
        self.put(item, False)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting for one if the queue is empty.

        Raises:
            queue.Empty: no item came (at once when ``block`` is False, else within
                ``timeout`` seconds).
            WouldDeadlockError: a blocking get in a hub greenlet while the queue is empty.
            ValueError: ``block`` and ``timeout`` is negative or NaN.
            OverflowError: ``timeout`` is larger than ``threading.TIMEOUT_MAX``.
            TypeError: ``timeout`` is not a number.
        """
        if timeout is not None and block:
            timeout = wait_timeout(timeout)
        try:
            item = self._items.popleft()
        except IndexError:
            if not block:
                raise Empty from None
            item = self._get_slow(timeout)
        if self._putters:
            self._wake_putter()
        return item

    def get_nowait(self) -> T:
        """``get(block=False)``."""
        return self.get(False)

    def _get_slow(self, timeout: float | None) -> T:
        deadline = deadline_after(timeout)
        woken = False
        with self._mutex:
            while True:
                try:
                    return self._items.popleft()
                except IndexError:
                    pass
                if expired(deadline):
                    raise Empty
                woken = sleep(self._mutex, self._getters, deadline, self._has_items, first=woken)

    def _has_items(self) -> bool:
        return bool(self._items)

    def _has_room(self) -> bool:
        return len(self._items) < self._maxsize

    def _wake_getter(self) -> None:
        with self._mutex:
            wake_one(self._getters)

    def _wake_putter(self) -> None:
        with self._mutex:
            wake_one(self._putters)

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``)."""
        if stage == RENEW:
            renew_after_fork(self._mutex, self._getters, self._putters)
        elif stage == RESUME:  # finish a put() or get() that the fork interrupted, in order
            for _ in range(min(len(self._items), len(self._getters))):
                wake_one(self._getters)
            room = self._maxsize - len(self._items) if self._maxsize else 0
            for _ in range(min(max(room, 0), len(self._putters))):
                wake_one(self._putters)

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            qsize=len(self._items),
            maxsize=self._maxsize,
            getters_waiting=len(self._getters),
            putters_waiting=len(self._putters),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} qsize={len(self._items)} maxsize={self._maxsize}>"

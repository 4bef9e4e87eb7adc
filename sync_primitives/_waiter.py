"""The single wake-up mechanism: every blocking call of the package sleeps in a waiter.

.. important::
   A waiter is created by, and sleeps in, the greenlet (or hub-less thread) that blocks.
   :meth:`wake` may be called from any thread. A greenlet of a thread that has a hub yields
   to that hub while it sleeps; a thread without a hub blocks natively on a raw lock.

How primitives use waiters
--------------------------
Each primitive keeps a ``deque`` of waiters guarded by its *mutex*, a native lock that is
only ever held for a few bytecodes and never across a switch. A blocking call does::

    with mutex:
        while not condition():
            if deadline passed: give up
            sleep(mutex, waiters, deadline)   # releases the mutex while asleep

and the side that changes the condition pops waiters *under the mutex* and wakes them.
So a waiter is woken at most once, a waker never wakes a waiter that already left, and the
condition is re-checked under the mutex after every wake-up or time-out. A wake-up is only
"re-check now", never a hand-over: a waiter woken at the very moment its time runs out still
sees the item, the lock or the flag that woke it. The one case that could lose a wake-up, a
woken waiter that leaves by exception (killed greenlet, ``gevent.Timeout``), passes its
wake-up on to the next waiter.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent._hub_local import get_hub_if_exists
from greenlet import getcurrent

from ._hub import HubPort, allocate_native_lock, current_port
from .errors import ClosedError, WouldDeadlockError

_WOKEN = object()
_TIMED_OUT = object()


class NativeWaiter:
    """Sleeps on a raw lock: for threads that have no gevent hub."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = allocate_native_lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def sleep(self, timeout: float | None) -> bool:
        return bool(self._lock.acquire(True, -1 if timeout is None else timeout))


class HubWaiter:
    """Parks a greenlet in its hub; woken through the hub's :class:`HubPort`.

    The wake-up and the timer both resolve the waiter in the hub greenlet, so exactly one
    of them switches back into the sleeping greenlet; the other finds it done.
    """

    __slots__ = ("_done", "_greenlet", "_port")

    def __init__(self, port: HubPort, greenlet: Any) -> None:
        self._port = port
        self._greenlet = greenlet
        self._done = False

    def wake(self) -> None:
        # A refused post means the waiter's thread has ended: nobody is left to wake.
        self._port.post(self)

    def fire(self) -> None:
        if not self._done:
            self._done = True
            self._greenlet.switch(_WOKEN)

    def abandon(self, error: ClosedError) -> None:
        """Its thread ended while it slept: nothing is left to resume."""

    def _expire(self) -> None:
        if not self._done:
            self._done = True
            self._greenlet.switch(_TIMED_OUT)

    def sleep(self, timeout: float | None) -> bool:
        port = self._port
        timer = None
        port.hold()  # no LoopExit while the only thing to wait for is another thread
        try:
            if timeout is not None:
                timer = port.hub.loop.timer(timeout)
                timer.start(self._expire)
            result = port.hub.switch()
        finally:
            # Also on exception (a killed greenlet): a late wake-up must not switch into it.
            self._done = True
            if timer is not None:
                timer.close()
            port.unhold()
        return result is not _TIMED_OUT


Waiter = NativeWaiter | HubWaiter


def make_waiter() -> Waiter:
    """A waiter for the calling greenlet or thread.

    Raises:
        WouldDeadlockError: called in a hub greenlet, which must never block.
    """
    hub = get_hub_if_exists()
    if hub is None:
        return NativeWaiter()
    current = getcurrent()
    if current is hub:
        raise WouldDeadlockError(
            "a blocking call in the hub greenlet would stop the loop that has to wake it; "
            "call it from a greenlet (gevent.spawn) or use the non-blocking variant"
        )
    return HubWaiter(current_port(), current)


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline of ``timeout`` seconds from now (None: no deadline).

    Raises:
        ValueError: ``timeout`` is negative.
    """
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, not {timeout!r}")
    return time.monotonic() + timeout


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None without a deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def sleep(
    mutex: Any,
    waiters: deque[Waiter],
    deadline: float | None,
    ready: Callable[[], bool] | None = None,
) -> None:
    """Sleep until woken through ``waiters`` or until ``deadline``.

    Must be called with ``mutex`` held; returns with it held. The caller re-checks its
    condition afterwards: this function does not say why it returned.

    ``ready`` is for conditions that the other side changes *without* the mutex (the
    lock-free fast paths of Lock and Queue): it is asked once more after the waiter is
    registered, and a True answer returns at once. The other side changes the condition
    before it looks for waiters, so between the two a wake-up cannot be lost.

    Raises:
        WouldDeadlockError: called in a hub greenlet.
    """
    waiter = make_waiter()
    waiters.append(waiter)
    if ready is not None and ready():
        # Nobody can have taken the waiter: wakers pop under the mutex, which we hold.
        waiters.pop()
        return
    mutex.release()
    try:
        woken = waiter.sleep(time_left(deadline))
    except BaseException:
        mutex.acquire()
        if not _discard(waiters, waiter) and waiters:
            # We were woken, but leave without re-checking: hand the wake-up on.
            waiters.popleft().wake()
        raise
    mutex.acquire()
    if not woken:
        _discard(waiters, waiter)


def _discard(waiters: deque[Waiter], waiter: Waiter) -> bool:
    """Remove ``waiter`` if it is still queued; False when a waker already took it."""
    try:
        waiters.remove(waiter)
    except ValueError:
        return False
    return True


def wake_one(waiters: deque[Waiter]) -> None:
    """Wake the longest waiting waiter, if any. Call with the primitive's mutex held."""
    if waiters:
        waiters.popleft().wake()


def wake_all(waiters: deque[Waiter]) -> None:
    """Wake every waiter. Call with the primitive's mutex held."""
    while waiters:
        waiters.popleft().wake()

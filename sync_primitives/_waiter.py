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
condition is re-checked under the mutex after every wake-up or time-out. For most
primitives a wake-up is "re-check now": a waiter woken at the very moment its time runs out
still sees the item or the flag that woke it. :class:`~sync_primitives.Lock` instead hands
the lock itself to the waiter it wakes (see ``lock.py``).

Every wake-up reaches a live waiter
-----------------------------------
A wake-up is lost if it goes to a waiter that will never run again. There are four ways to
be such a waiter, and each passes the wake-up on to the next one:

1. Its greenlet leaves by exception (killed, ``gevent.Timeout``) after it was woken: the
   exception path of :func:`sleep` finds it was popped and passes the wake-up on.
2. Its thread ended before the wake-up was posted: :meth:`HubWaiter.wake` returns False
   (the port refused the post) and :func:`wake_one` moves on to the next waiter.
3. Its thread ended after the port accepted the wake-up but before the hub ran it: the
   port *abandons* the queued wake-up (:meth:`HubWaiter.abandon`), which passes it on.
4. Its thread ended while it slept, before anybody woke it: the closing port *cancels* it
   (:meth:`HubWaiter.cancel`), which takes it out of the primitive's deque, so that no
   wake-up is ever spent on it and ``statistics()`` no longer counts it.

Exactly one of these applies to a dead waiter: a waker pops it under the primitive's
mutex (so the port either refused the post, 2, or holds it, 3) or it is still queued (4);
cases 3 and 4 run after the port has stopped accepting posts: in the ending thread, in its
port's ``close()``, or, for a hub destroyed under its greenlets, in a thread of their own.
A waiter in a child process whose thread did not survive ``fork()`` is removed by ``_fork``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent._hub_local import get_hub_if_exists
from greenlet import getcurrent

from ._hub import TIMEOUT_MAX, HubPort, allocate_native_lock, port_for
from .errors import ClosedError, WouldDeadlockError


class NativeWaiter:
    """Sleeps on a raw lock: for threads that have no gevent hub."""

    __slots__ = ("_lock", "owner")

    def __init__(self, owner: Any) -> None:
        self._lock = allocate_native_lock()
        self._lock.acquire()
        #: The greenlet that sleeps (a hub-less thread's main greenlet).
        self.owner = owner

    def wake(self) -> bool:
        """Wake the thread; always taken (a thread blocked in a native wait is alive)."""
        self._lock.release()
        return True

    def sleep(self, timeout: float | None) -> None:
        """Until woken or ``timeout``; the deque, not this, says which (see sleep())."""
        self._lock.acquire(True, -1 if timeout is None else timeout)

    def survives_fork(self) -> bool:
        """Only the forking thread lives on in a child, and it is not asleep."""
        return False


class HubWaiter:
    """Parks a greenlet in its hub; woken through the hub's :class:`HubPort`.

    The wake-up and the timer both resolve the waiter in the hub greenlet, so exactly one
    of them switches back into the sleeping greenlet; the other finds it done.
    """

    __slots__ = ("_done", "_mutex", "_pass_on", "_port", "_waiters", "owner")

    def __init__(
        self,
        port: HubPort,
        owner: Any,
        mutex: Any,
        waiters: deque[Waiter],
        pass_on: Callable[[], None] | None,
    ) -> None:
        self._port = port
        #: The greenlet that sleeps.
        self.owner = owner
        self._mutex = mutex
        self._waiters = waiters
        self._pass_on = pass_on
        self._done = False

    def wake(self) -> bool:
        """Post the wake-up to the waiter's hub; False if its thread has ended (case 2)."""
        return self._port.post(self)

    def fire(self) -> None:
        if not self._done:
            self._done = True
            self.owner.switch()

    def abandon(self, error: ClosedError) -> None:
        """Case 3: the thread ended with this wake-up still queued; give it to the next."""
        with self._mutex:
            pass_on(self._waiters, self._pass_on)

    def cancel(self) -> None:
        """Case 4: the thread ended while this waiter slept; forget it.

        If a waker popped it meanwhile, that wake-up is case 2 or 3 and handled there.
        """
        with self._mutex:
            discard(self._waiters, self)

    def _expire(self) -> None:
        if not self._done:
            self._done = True
            self.owner.switch()

    def sleep(self, timeout: float | None) -> None:
        """Until woken or ``timeout``; the deque, not this, says which (see sleep())."""
        port = self._port
        timer = None
        port.park(self)  # also no LoopExit while the only thing to wait for is another thread
        try:
            if timeout is not None:
                timer = port.hub.loop.timer(timeout)
                timer.start(self._expire)
            port.hub.switch()
        finally:
            # Also on exception (a killed greenlet): a late wake-up must not switch into it.
            self._done = True
            if timer is not None:
                timer.close()
            port.unpark(self)

    def survives_fork(self) -> bool:
        """In a child process: True if it sleeps in the hub of the forking thread."""
        return self._port.is_current()

    def queued(self) -> bool:
        """Still in its primitive's deque, not taken by a waker (mutex held, or no other
        thread running)."""
        return self in self._waiters


Waiter = NativeWaiter | HubWaiter


def sleep(
    mutex: Any,
    waiters: deque[Waiter],
    deadline: float | None,
    ready: Callable[[], bool] | None = None,
    *,
    on_lost: Callable[[], None] | None = None,
    first: bool = False,
) -> bool:
    """Sleep until woken through ``waiters`` or until ``deadline``; True if a waker took it.

    Must be called with ``mutex`` held; returns with it held. The caller re-checks its
    condition afterwards: a False return may be a time-out or a spurious wake-up.

    ``ready`` is for conditions that the other side changes *without* the mutex (the
    lock-free fast paths of Lock and Queue): it is asked once more after the waiter is
    registered, and a True answer returns at once (as woken). The other side changes the
    condition before it looks for waiters, so between the two a wake-up cannot be lost.

    ``on_lost`` is what passes on a wake-up that this waiter received but will not use
    (called with the mutex held); by default, :func:`wake_one` of ``waiters``.

    ``first`` queues the waiter at the front: for a waiter that was woken but found the
    condition false again, so that it does not lose its turn.

    Raises:
        WouldDeadlockError: called in a hub greenlet.
    """
    current = getcurrent()
    hub = get_hub_if_exists()
    waiter: Waiter
    if hub is None:
        waiter = NativeWaiter(current)
    else:
        if current is hub:
            raise WouldDeadlockError(
                "a blocking call in the hub greenlet would stop the loop that has to wake "
                "it; call it from a greenlet (gevent.spawn) or use the non-blocking variant"
            )
        port = port_for(hub)
        if port is None:
            # This thread's port must be made (or replaced, closing the old one, which
            # takes the mutexes of its parked waiters): never under a primitive's mutex.
            mutex.release()
            try:
                port_for(hub, create=True)
            finally:
                mutex.acquire()
            return False
        waiter = HubWaiter(port, current, mutex, waiters, on_lost)
    if first:
        waiters.appendleft(waiter)
    else:
        waiters.append(waiter)
    if ready is not None and ready():
        # Nobody can have taken the waiter: wakers pop under the mutex, which we hold.
        waiters.popleft() if first else waiters.pop()
        return True
    mutex.release()
    try:
        waiter.sleep(time_left(deadline))
    except BaseException:
        mutex.acquire()
        if not discard(waiters, waiter):
            pass_on(waiters, on_lost)  # case 1: woken, but leaving without using it
        raise
    mutex.acquire()
    # Only the deque says whether a waker took the waiter: it may also have woken by its
    # time-out (then the waker's wake-up is still its own), or spuriously (after a fork),
    # still queued: then it must leave the deque, or a wake-up would be spent on it.
    return not discard(waiters, waiter)


def renew_after_fork(mutex: Any, *queues: deque[Waiter]) -> None:
    """In a child process: unlock ``mutex`` in place and drop the waiters that did not
    survive from ``queues``.

    In place, not replaced: a surviving greenlet asleep in :func:`sleep` holds a reference
    to this very mutex and takes it when it wakes. The forking thread never holds a mutex
    at the fork (none is held across a call that could fork), so unlocking is safe.
    """
    mutex._at_fork_reinit()
    for waiters in queues:
        survivors = [waiter for waiter in waiters if waiter.survives_fork()]
        waiters.clear()
        waiters.extend(survivors)


def discard(waiters: deque[Waiter], waiter: Waiter) -> bool:
    """Remove ``waiter`` if it is still queued; False when a waker already took it."""
    try:
        waiters.remove(waiter)
    except ValueError:
        return False
    return True


def pass_on(waiters: deque[Waiter], on_lost: Callable[[], None] | None) -> None:
    """Give a wake-up that its waiter will not use to the next one (mutex held)."""
    if on_lost is None:
        wake_one(waiters)
    else:
        on_lost()


def wake_one(waiters: deque[Waiter]) -> bool:
    """Wake the longest waiting live waiter; False if none. Call with the mutex held.

    A waiter whose thread has ended refuses the wake-up: it is dropped and the next tried.
    """
    while waiters:
        if waiters.popleft().wake():
            return True
    return False


def wake_all(waiters: deque[Waiter]) -> None:
    """Wake every waiter. Call with the primitive's mutex held."""
    while waiters:
        waiters.popleft().wake()


# -- time-outs --------------------------------------------------------------------------------
#
# Each primitive follows the standard library's meaning of a time-out, checked before any
# fast path so that the answer never depends on timing. Every check rejects what is not a
# real number (TypeError) and what is larger than threading.TIMEOUT_MAX (OverflowError).


def _seconds(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int beyond a float's range: only its sign matters
        seconds = -math.inf if timeout < 0 else math.inf
    if seconds > TIMEOUT_MAX:
        raise OverflowError(f"timeout {timeout!r} is larger than threading.TIMEOUT_MAX")
    return seconds


def wait_timeout(timeout: float | None) -> float | None:
    """``timeout`` of a wait that must be able to wait (``Queue``); None is forever.

    Raises:
        ValueError: it is negative or NaN (``queue.Queue`` raises for a negative one;
            with NaN it would spin for ever).
        TypeError, OverflowError: see above.
    """
    if timeout is None:
        return None
    seconds = _seconds(timeout)
    if not seconds >= 0:  # also NaN
        raise ValueError(f"timeout must be a non-negative number, not {timeout!r}")
    return seconds


def poll_timeout(timeout: float | None) -> float | None:
    """``timeout`` of ``Event.wait`` and ``AsyncResult.get``; None is forever.

    As ``threading.Event.wait`` and ``Future.result``: a negative or NaN time-out means
    "do not wait" (0).

    Raises:
        TypeError, OverflowError: see above.
    """
    if timeout is None:
        return None
    seconds = _seconds(timeout)
    return seconds if seconds > 0 else 0.0


def lock_timeout(blocking: bool, timeout: float | None) -> float | None:
    """``timeout`` of ``Lock.acquire`` as ``threading.Lock`` means it; None is forever.

    -1 (threading's default) and None mean "no time-out"; ``blocking=False`` is a time-out
    of 0 and takes no other.

    Raises:
        ValueError: a time-out with ``blocking=False``, or one that is negative (but -1)
            or NaN.
        TypeError, OverflowError: see above.
    """
    if timeout is None:
        return None if blocking else 0.0
    seconds = _seconds(timeout)
    if seconds == -1:
        return None if blocking else 0.0
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be a non-negative number or -1, not {timeout!r}")
    return seconds


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline of a checked ``timeout`` from now (None: no deadline)."""
    if timeout is None:
        return None
    return time.monotonic() + timeout


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None without a deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline

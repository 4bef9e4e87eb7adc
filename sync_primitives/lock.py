"""Lock and RLock: owned by one greenlet, contended from any thread, hub or greenlet.

.. important::
   A lock belongs to no thread: any greenlet of any thread (with or without a hub) may
   acquire it. The owner is the *greenlet* that acquired it (a thread without a hub counts
   as its main greenlet), and only the owner may release it. A greenlet waiting for the lock
   yields to its own hub; a thread without a hub blocks natively.

Fair: a release hands the lock to the longest-waiting waiter
-----------------------------------------------------------
When greenlets or threads wait, ``release()`` does not free the lock: it makes the first
waiter the owner and wakes it (FIFO, as trio's lock does). Until that waiter runs, the lock
stays taken, so neither the releaser looping back nor a non-blocking ``acquire`` can barge
in and starve it. A waiter that cannot take its turn passes the lock on: one whose thread
has ended (its wake-up is refused, abandoned or cancelled, see ``_waiter``) and one that
leaves by exception after it was handed the lock.

Without waiters, the fast path is one non-blocking acquire of a native lock: no
Python-level mutex, no waiter. The slow path registers a waiter under the mutex *before*
trying the native lock once more, and the lock-free release frees the native lock *before*
it looks for waiters; a releaser that then finds a waiter takes the native lock back, under
the mutex, to hand it over. With the GIL ordering these steps, either the waiter's second
try succeeds or the releaser sees the waiter: a wake-up cannot be lost.

Arguments mean what they mean for :class:`threading.Lock`, checked before any fast path:
``timeout=-1`` (or None) waits forever, ``acquire(False, t)`` is a ValueError for any
``t`` but -1, a negative or NaN ``timeout`` is a ValueError whether the lock is free or not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from greenlet import getcurrent

from ._fork import RENEW, RESUME, survives, track
from ._hub import allocate_native_lock
from ._waiter import Waiter, deadline_after, expired, lock_timeout, renew_after_fork, sleep
from .errors import WouldDeadlockError


@dataclass(frozen=True)
class LockStatistics:
    """A snapshot of a :class:`Lock` or :class:`RLock`."""

    locked: bool
    owner: str | None
    depth: int
    waiting: int


class Lock:
    """A mutual-exclusion lock owned by one greenlet, across all threads.

    ``acquire(blocking=True, timeout=None)`` and ``release()`` as in :mod:`threading`, and the
    context-manager protocol.
    """

    __slots__ = ("__weakref__", "_lock", "_mutex", "_owner", "_waiters")

    def __init__(self) -> None:
        self._lock = allocate_native_lock()
        self._owner: Any = None
        self._mutex = allocate_native_lock()
        self._waiters: deque[Waiter] = deque()
        track(self)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; return True if it was acquired.

        ``timeout`` None or -1 waits forever; ``blocking=False`` does not wait at all.

        Raises:
            WouldDeadlockError: the calling greenlet already holds it and would wait (for
                itself: always a bug, with or without a time-out), or a blocking acquire
                was attempted in a hub greenlet while the lock is taken.
            ValueError: ``timeout`` is negative (but -1) or NaN, or given with
                ``blocking=False``.
            OverflowError: ``timeout`` is larger than ``threading.TIMEOUT_MAX``.
            TypeError: ``timeout`` is not a number.
        """
        if timeout is not None or not blocking:
            timeout = lock_timeout(blocking, timeout)
        if self._lock.acquire(False):
            self._owner = getcurrent()
            return True
        return timeout != 0.0 and self._acquire_contended(timeout)

    def _acquire_contended(self, timeout: float | None) -> bool:
        """Wait for the lock; ``timeout`` is checked and not 0."""
        current = getcurrent()
        if self._owner is current:
            raise WouldDeadlockError(f"{self!r} is already held by this greenlet")
        deadline = deadline_after(timeout)
        with self._mutex:
            while True:
                if self._take(current):
                    return True
                if expired(deadline):
                    return False
                sleep(self._mutex, self._waiters, deadline, self._take_now, on_lost=self._hand_over)
                if self._owner is current:  # handed over (also at the moment it timed out)
                    return True

    def _take(self, current: Any) -> bool:
        if self._lock.acquire(False):
            self._owner = current
            return True
        return False

    def _take_now(self) -> bool:
        return self._take(getcurrent())

    def release(self) -> None:
        """Release the lock, handing it to the longest-waiting waiter if there is one.

        Raises:
            RuntimeError: the calling greenlet does not hold it.
        """
        if self._owner is not getcurrent():
            raise RuntimeError(f"cannot release {self!r}: it is not held by this greenlet")
        self._release_owned()

    def _release_owned(self) -> None:
        if self._waiters:
            with self._mutex:
                self._hand_over()
            return
        self._owner = None
        self._lock.release()
        if self._waiters:
            # A waiter came between the look and the release. Its own retry may have taken
            # the lock, or a newcomer has: that owner hands it over in turn. If it is still
            # free, take it back and hand it over, so that the waiter does not sleep on.
            with self._mutex:
                if self._waiters and self._lock.acquire(False):
                    self._hand_over()

    def _hand_over(self) -> None:
        """Give the held lock to the first live waiter, or free it (mutex held)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            self._owner = waiter.owner
            if waiter.wake():
                return
        self._owner = None
        self._lock.release()

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``)."""
        if stage == RENEW:
            renew_after_fork(self._mutex, self._waiters)
        elif stage == RESUME:
            owner = self._owner
            if not self._lock.locked():
                # Freed by a release that the fork interrupted before it looked for waiters.
                if self._waiters and self._lock.acquire(False):
                    self._release_owned()
            elif owner is None or not survives(owner):
                # Taken by a thread that is gone (or by one that had not recorded itself as
                # the owner yet, or was releasing): nobody else can ever release it.
                self._release_owned()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def statistics(self) -> LockStatistics:
        owner = self._owner
        return LockStatistics(
            locked=self.locked(),
            owner=None if owner is None else repr(owner),
            depth=int(self.locked()),
            waiting=len(self._waiters),
        )

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<{type(self).__name__} {state} at {id(self):#x}>"


class RLock(Lock):
    """A re-entrant :class:`Lock`: its owner greenlet may acquire it again.

    It is released when ``release()`` has been called as many times as ``acquire()``.
    """

    __slots__ = ("_depth",)

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock, or acquire it once more if this greenlet holds it.

        Raises:
            WouldDeadlockError: a blocking acquire in a hub greenlet while another holds it.
            ValueError, OverflowError, TypeError: as :meth:`Lock.acquire`.
        """
        if timeout is not None or not blocking:
            timeout = lock_timeout(blocking, timeout)
        current = getcurrent()
        if self._owner is current:
            self._depth += 1
            return True
        if self._take(current) or (timeout != 0.0 and self._acquire_contended(timeout)):
            self._depth = 1
            return True
        return False

    def release(self) -> None:
        """Undo one ``acquire()``; the last one releases the lock.

        Raises:
            RuntimeError: the calling greenlet does not hold it.
        """
        if self._owner is not getcurrent():
            raise RuntimeError(f"cannot release {self!r}: it is not held by this greenlet")
        self._depth -= 1
        if self._depth == 0:
            self._release_owned()

    def _after_fork(self, stage: int) -> None:
        owner = self._owner
        super()._after_fork(stage)
        if self._owner is not owner:  # freed or handed over: the new owner sets it to 1
            self._depth = 0

    def statistics(self) -> LockStatistics:
        stats = super().statistics()
        return LockStatistics(stats.locked, stats.owner, self._depth, stats.waiting)

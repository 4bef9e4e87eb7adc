"""Lock and RLock: owned by one greenlet, contended from any thread, hub or greenlet.

.. important::
   A lock belongs to no thread: any greenlet of any thread (with or without a hub) may
   acquire it. The owner is the *greenlet* that acquired it (a thread without a hub counts
   as its main greenlet), and only the owner may release it. A greenlet waiting for the lock
   yields to its own hub; a thread without a hub blocks natively.

The fast path is one non-blocking acquire of a native lock: no Python-level mutex, no
waiter. Only contention takes the slow path, which registers a waiter *before* trying the
native lock once more, while the releasing side releases the native lock *before* looking
for waiters. With the GIL ordering these steps, either the waiter's second try succeeds or
the releaser sees the waiter: a wake-up cannot be lost (see ``_waiter``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from greenlet import getcurrent

from ._hub import allocate_native_lock
from ._waiter import Waiter, deadline_after, expired, sleep, wake_one
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

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; return True if it was acquired.

        Raises:
            WouldDeadlockError: the calling greenlet already holds it (a blocking acquire
                could never return), or a blocking acquire was attempted in a hub greenlet
                while the lock is taken.
            ValueError: ``timeout`` is negative, or given with ``blocking=False``.
        """
        if self._lock.acquire(False):
            self._owner = getcurrent()
            return True
        return self._acquire_contended(blocking, timeout)

    def _acquire_contended(self, blocking: bool, timeout: float | None) -> bool:
        current = getcurrent()
        if not blocking:
            if timeout is not None:
                raise ValueError("a timeout makes no sense with blocking=False")
            return False
        if self._owner is current:
            raise WouldDeadlockError(f"{self!r} is already held by this greenlet")
        deadline = deadline_after(timeout)
        with self._mutex:
            while True:
                if self._lock.acquire(False):
                    self._owner = current
                    return True
                if expired(deadline):
                    return False
                sleep(self._mutex, self._waiters, deadline, self._is_free)

    def _is_free(self) -> bool:
        return not self._lock.locked()

    def release(self) -> None:
        """Release the lock.

        Raises:
            RuntimeError: the calling greenlet does not hold it.
        """
        if self._owner is not getcurrent():
            raise RuntimeError(f"cannot release {self!r}: it is not held by this greenlet")
        self._release_owned()

    def _release_owned(self) -> None:
        self._owner = None
        self._lock.release()
        if self._waiters:
            with self._mutex:
                wake_one(self._waiters)

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
            ValueError: ``timeout`` is negative, or given with ``blocking=False``.
        """
        current = getcurrent()
        if self._owner is current:
            self._depth += 1
            return True
        if self._lock.acquire(False) or self._acquire_contended(blocking, timeout):
            self._owner = current
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

    def statistics(self) -> LockStatistics:
        stats = super().statistics()
        return LockStatistics(stats.locked, stats.owner, self._depth, stats.waiting)

"""Event and AsyncResult: set from any thread, waited on from any number of hubs at once.

.. important::
   Neither belongs to a thread or hub. ``set()`` may be called from any thread, greenlet or
   hub greenlet (it never blocks). ``wait()`` and ``get()`` may be called from greenlets of
   any hub and from threads without a hub, all at the same time; a greenlet yields to its
   own hub while it waits, a hub-less thread blocks natively. Blocking calls are refused in
   a hub greenlet (:class:`~sync_primitives.WouldDeadlockError`).

gevent's ``Event`` and ``AsyncResult`` are for the greenlets of one thread: waited on from
two hubs they raise ``InvalidThreadUseError``, and a lone waiter set from another thread can
get ``LoopExit`` (REFERENCE.md section 1). These keep their waiters in a list of their own
and wake each through the waiter's own hub.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import _fork
from ._fork import RENEW, RESUME, track
from ._hub import allocate_native_lock
from ._waiter import (
    Waiter,
    deadline_after,
    expired,
    poll_timeout,
    renew_after_fork,
    sleep,
    wake_all,
)

T = TypeVar("T")


@dataclass(frozen=True)
class EventStatistics:
    """A snapshot of an :class:`Event` or :class:`AsyncResult`."""

    is_set: bool
    waiting: int


class Event:
    """A flag that greenlets and threads can wait for.

    ``set()``, ``clear()``, ``is_set()`` and ``wait(timeout=None) -> bool`` as in
    :mod:`threading`.
    """

    __slots__ = ("__weakref__", "_flag", "_generation", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._generation = 0
        self._mutex = allocate_native_lock()
        self._waiters: deque[Waiter] = deque()
        track(self)

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter; never blocks."""
        with self._mutex:
            self._flag = True
            self._generation += 1
            wake_all(self._waiters)

    def clear(self) -> None:
        """Reset the flag. Waiters already woken by an earlier ``set()`` still return True."""
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; return the flag.

        A waiter woken by ``set()`` returns True even if ``clear()`` followed at once. As
        with :meth:`threading.Event.wait`, a ``timeout`` that is negative or NaN does not
        wait.

        Raises:
            WouldDeadlockError: in a hub greenlet while the flag is not set.
            OverflowError: ``timeout`` is larger than ``threading.TIMEOUT_MAX``.
            TypeError: ``timeout`` is not a number.
        """
        if timeout is not None:
            timeout = poll_timeout(timeout)
        if self._flag:
            return True
        if timeout == 0.0:
            return False
        deadline = deadline_after(timeout)
        with self._mutex:
            # A set() bumps the generation: a waiter it woke returns True even when a
            # clear() ran before the waiter could look at the flag.
            generation = self._generation
            while not self._flag and self._generation == generation:
                if expired(deadline):
                    return False
                sleep(self._mutex, self._waiters, deadline)
            return True

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``)."""
        if stage == RENEW:
            renew_after_fork(self._mutex, self._waiters)
        elif stage == RESUME:
            # A set() that the fork interrupted (even one undone by clear() since) may have
            # woken only some: all look again; the ones it did not concern sleep on.
            wake_all(self._waiters)

    def statistics(self) -> EventStatistics:
        return EventStatistics(is_set=self._flag, waiting=len(self._waiters))

    def __repr__(self) -> str:
        state = "set" if self._flag else "unset"
        return f"<{type(self).__name__} {state}, {len(self._waiters)} waiting>"


class AsyncResult(Generic[T]):
    """A value or an exception that will be set once, by any thread, and read by many.

    ``set(value)`` stores a value; if ``value`` is an exception instance, ``get()`` raises it.
    """

    __slots__ = (
        "__weakref__",
        "_exception",
        "_fork_generation",
        "_mutex",
        "_ready",
        "_tracked",
        "_value",
        "_waiters",
    )

    def __init__(self) -> None:
        self._ready = False
        self._value: T | None = None
        self._exception: BaseException | None = None
        self._mutex = allocate_native_lock()
        self._waiters: deque[Waiter] = deque()
        # Made by the thousand (one per Launcher call), it is tracked for fork() only once
        # somebody waits on it; until then, a child process renews it on first use.
        self._fork_generation = _fork.generation
        self._tracked = False

    def ready(self) -> bool:
        """True once a value or an exception has been set."""
        return self._ready

    def successful(self) -> bool:
        """True once a value (not an exception) has been set."""
        return self._ready and self._exception is None

    def exception(self) -> BaseException | None:
        """The exception that was set, or None (also while not ready)."""
        return self._exception

    def set(self, value: T | BaseException) -> None:
        """Store the outcome and wake every waiter; never blocks.

        Raises:
            RuntimeError: the result was already set.
        """
        if isinstance(value, BaseException):
            self._resolve(None, value)
        else:
            self._resolve(value, None)

    def _resolve(self, value: T | None, exception: BaseException | None) -> None:
        if self._fork_generation != _fork.generation:
            _fork.renew_lazily(self)
        with self._mutex:
            if self._ready:
                raise RuntimeError(f"{self!r} is already set")
            self._value = value
            self._exception = exception
            self._ready = True
            wake_all(self._waiters)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the result is set or ``timeout`` seconds pass; return :meth:`ready`.

        As with :meth:`concurrent.futures.Future.result`, a ``timeout`` that is negative or
        NaN does not wait.

        Raises:
            WouldDeadlockError: in a hub greenlet while the result is not ready.
            OverflowError: ``timeout`` is larger than ``threading.TIMEOUT_MAX``.
            TypeError: ``timeout`` is not a number.
        """
        if timeout is not None:
            timeout = poll_timeout(timeout)
        if self._ready:
            return True
        if timeout == 0.0:
            return False
        if self._fork_generation != _fork.generation:
            _fork.renew_lazily(self)
        if not self._tracked:  # a waiter may be asleep in it at a fork from now on
            self._tracked = True
            track(self)
        deadline = deadline_after(timeout)
        with self._mutex:
            while not self.ready():  # a call: mypy would keep the narrowing of _ready
                if expired(deadline):
                    return False
                sleep(self._mutex, self._waiters, deadline)
            return True

    def get(self, timeout: float | None = None) -> T:
        """The value, once set; raises the exception if one was set.

        Raises:
            TimeoutError: nothing was set within ``timeout`` seconds.
            WouldDeadlockError: in a hub greenlet while the result is not ready.
            OverflowError, TypeError: as :meth:`wait`.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"{self!r} was not set within {timeout} s")
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[return-value]

    def _after_fork(self, stage: int) -> None:
        """In a child process: at the fork if tracked, else on first use (see ``_fork``)."""
        if stage == RENEW:
            renew_after_fork(self._mutex, self._waiters)
            self._fork_generation = _fork.generation
        elif stage == RESUME and self._ready:  # a set() the fork interrupted
            wake_all(self._waiters)

    def statistics(self) -> EventStatistics:
        if self._fork_generation != _fork.generation:
            _fork.renew_lazily(self)
        return EventStatistics(is_set=self._ready, waiting=len(self._waiters))

    def __repr__(self) -> str:
        if not self._ready:
            state = "pending"
        elif self._exception is not None:
            state = f"exception={self._exception!r}"
        else:
            state = "value"
        return f"<{type(self).__name__} {state} at {id(self):#x}>"

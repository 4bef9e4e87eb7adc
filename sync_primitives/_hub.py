"""Per-thread hub ports and thread-exit hooks: the one way work crosses into a hub.

.. important::
   A :class:`HubPort` belongs to one OS thread and to the gevent hub that thread runs.
   :meth:`HubPort.post` may be called from any thread, greenlet or hub; every item it
   accepts is fired in the hub greenlet of the port's own thread. The thread-exit hooks
   run in the exiting thread itself, after its Python code has returned.

Everything here uses the *native* threading primitives, captured with
``gevent.monkey.get_original`` so that ``gevent.monkey.patch_all()`` (before or after this
import) does not turn them into greenlet primitives: a "thread" in this package is always an
OS thread, and a "hub" is the one gevent hub of such a thread.

Why a port instead of ``loop.run_callback_threadsafe``
----------------------------------------------------
gevent's own thread-safe callback does not know when its thread has ended (a callback sent
to a dead hub is silently lost, REFERENCE.md section 1) and it cannot keep the loop alive
while a greenlet waits for another thread (the ``LoopExit`` of gevent #2124). A port fixes
both: it is closed by a thread-exit hook, after which :meth:`HubPort.post` refuses work and
everything still queued is *abandoned* (told that it will never run) instead of vanishing;
and it holds a reference on its loop exactly while some greenlet of the hub is waiting on
another thread, so that the hub neither exits early nor stays alive for nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent import monkey

from ._fork import CLOSE, RENEW, RESUME, track
from .errors import ClosedError

_log = logging.getLogger(__name__)

allocate_native_lock: Callable[[], Any] = monkey.get_original("_thread", "allocate_lock")
TIMEOUT_MAX: float = monkey.get_original("_thread", "TIMEOUT_MAX")
native_get_ident: Callable[[], int] = monkey.get_original("_thread", "get_ident")
_start_new_thread: Callable[..., int] = monkey.get_original("_thread", "start_new_thread")
_NativeLocal: type = monkey.get_original("_thread", "_local")


def start_native_thread(function: Callable[..., object], args: tuple[Any, ...]) -> int:
    """Start an OS thread running ``function(*args)``, with the trace and profile functions
    of :func:`threading.settrace` and :func:`threading.setprofile` installed first, as
    :class:`threading.Thread` does: debuggers, coverage and profilers see these threads too.
    """
    return _start_new_thread(_run_with_thread_hooks, (function, args))


def _run_with_thread_hooks(function: Callable[..., object], args: tuple[Any, ...]) -> None:
    trace, profile = threading.gettrace(), threading.getprofile()
    if trace is not None:
        sys.settrace(trace)
    if profile is not None:
        sys.setprofile(profile)
    function(*args)


#: One native thread-local for the whole package: ``port`` and ``exit_hooks`` per OS thread.
_tls = _NativeLocal()


class PortItem(Protocol):
    """Work accepted by :meth:`HubPort.post`."""

    def fire(self) -> None:
        """Run in the hub greenlet of the port's thread. Must not block."""

    def abandon(self, error: ClosedError) -> None:
        """Called instead of :meth:`fire` when the thread ended first (in the ending thread)."""


class ParkedWaiter(PortItem, Protocol):
    """A waiter asleep in a port's hub (``_waiter.HubWaiter``); posting it wakes it."""

    def queued(self) -> bool:
        """Still in its primitive's deque, not taken by a waker."""

    def cancel(self) -> None:
        """Its thread ended while it slept: take it out of its primitive (ending thread)."""


def thread_name(ident: int | None = None) -> str:
    """A readable name for the OS thread ``ident`` (default: the current one).

    Never creates a ``threading`` dummy thread object as a side effect.
    """
    if ident is None:
        ident = native_get_ident()
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread-{ident:#x}"


class _ExitHooks:
    """Callbacks run when the native thread-local of one thread is torn down.

    CPython clears a thread's ``_thread._local`` storage when the thread state is cleared,
    in the exiting thread, before ``threading.Thread.join()`` returns; dropping the last
    reference to this object then runs ``__del__``.
    """

    __slots__ = ("callbacks",)

    def __init__(self) -> None:
        self.callbacks: dict[object, Callable[[], None]] = {}

    def __del__(self) -> None:
        callbacks = list(self.callbacks.values())
        self.callbacks.clear()
        for callback in reversed(callbacks):
            try:
                callback()
            except Exception:  # a hook must never stop the others
                if _log is not None:  # None once the interpreter is shutting down
                    _log.exception("thread-exit hook %r failed", callback)


def call_at_thread_exit(key: object, callback: Callable[[], None]) -> None:
    """Run ``callback()`` when the current OS thread exits.

    Registering again with the same ``key`` replaces the earlier callback. Hooks run in the
    exiting thread, newest first.
    """
    hooks = getattr(_tls, "exit_hooks", None)
    if hooks is None:
        hooks = _tls.exit_hooks = _ExitHooks()
    hooks.callbacks[key] = callback


def cancel_thread_exit(key: object) -> None:
    """Forget the current thread's exit hook registered under ``key``, if any."""
    hooks = getattr(_tls, "exit_hooks", None)
    if hooks is not None:
        hooks.callbacks.pop(key, None)


class HubPort:
    """The entry of one hub for work coming from any thread.

    Items are queued in a deque and an ``async`` watcher of the hub's loop is sent; its
    callback fires the items in the hub greenlet. Sends coalesce: many posts made while the
    hub is busy cost one wake-up of the loop.
    """

    __slots__ = (
        "__weakref__",
        "_async",
        "_closed",
        "_holds",
        "_items",
        "_lock",
        "_loop",
        "_parked",
        "hub",
        "name",
        "thread_ident",
    )

    def __init__(self, hub: Any, name: str | None = None) -> None:
        self.hub = hub
        self.thread_ident = native_get_ident()
        self.name = name or thread_name(self.thread_ident)
        self._loop = hub.loop
        self._items: deque[PortItem] = deque()
        self._lock = allocate_native_lock()
        self._closed = False
        self._holds = 0
        self._parked: set[ParkedWaiter] = set()
        self._async = self._loop.async_()
        self._async.start(self._drain)
        # Unreferenced until a greenlet of this hub waits (see hold): an idle port must not
        # keep ``gevent.wait()`` or ``hub.join()`` of its thread from returning.
        self._async.ref = False
        track(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<HubPort of {self.name!r} {state}, {len(self._items)} queued>"

    @property
    def closed(self) -> bool:
        return self._closed

    def post(self, item: PortItem) -> bool:
        """Queue ``item`` to be fired in this port's hub; any thread.

        Returns False, and does nothing, when the port's thread has ended or its hub was
        destroyed.
        """
        # The send stays under the lock: close() stops the watcher under the same lock,
        # so a send can never reach a watcher that has been closed.
        with self._lock:
            if self._closed:
                return False
            self._items.append(item)
            try:
                self._async.send()
                return True
            except ValueError:  # "operation on destroyed loop"
                if self._loop_alive():
                    raise
                self._items.pop()
                self._closed = True
        # The thread destroyed its hub (gevent.get_hub().destroy()) and may live on: that
        # hub will never run again, as if its thread had ended. What is queued, and the
        # parked waiters, are given up as close() does, but not here, where the caller may
        # hold the mutex of a primitive that abandoning and cancelling take: in a thread
        # of its own, once.
        start_native_thread(self._give_up, ())
        return False

    def _loop_alive(self) -> bool:
        return bool(getattr(self._loop, "ptr", 0))

    def is_current(self) -> bool:
        """True in the port's own thread, while the port is that thread's port.

        Never decided by thread ident: a new thread may get the ident of an ended one.
        """
        return getattr(_tls, "port", None) is self and not self._closed

    def post_or_raise(self, item: PortItem, what: str) -> None:
        """:meth:`post`, raising :class:`ClosedError` naming ``what`` when refused."""
        if not self.post(item):
            raise ClosedError(f"cannot {what}: thread {self.name!r} has ended")

    def _drain(self) -> None:
        # Runs in the hub greenlet. Only the items present now are fired: an item posted
        # meanwhile also sent the watcher again, so it gets its own callback, and a thread
        # posting without pause cannot starve the rest of the loop.
        items = self._items
        for _ in range(len(items)):
            try:
                item = items.popleft()
            except IndexError:  # close() took them
                return
            try:
                item.fire()
            except Exception:
                _log.exception("work posted to thread %r failed in its hub", self.name)

    def hold(self) -> None:
        """Keep the loop alive while a greenlet waits on another thread (hub thread only)."""
        self._holds += 1
        if self._holds == 1 and not self._closed:  # a closed watcher is gone
            self._async.ref = True

    def unhold(self) -> None:
        """Undo one :meth:`hold` (hub thread only)."""
        self._holds -= 1
        if self._holds == 0 and not self._closed:
            self._async.ref = False

    def park(self, waiter: ParkedWaiter) -> None:
        """A greenlet of this hub starts sleeping in ``waiter`` (hub thread only).

        Holds the loop, and makes :meth:`close` cancel the waiter if the thread ends first.
        """
        self._parked.add(waiter)
        self.hold()

    def unpark(self, waiter: ParkedWaiter) -> None:
        """Undo :meth:`park` (hub thread only)."""
        self._parked.discard(waiter)
        self.unhold()

    def close(self, stop_watcher: bool = True) -> None:
        """Refuse further posts, abandon what is queued and cancel parked waiters; idempotent.

        Called in the port's own thread: by its exit hook, by :class:`~.Thread` when it ends,
        or when the thread's hub was replaced; in a child process, for every thread that
        did not survive ``fork()``. Never with a primitive's mutex held: abandoning and
        cancelling take those mutexes.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The loop may already be destroyed (hub.destroy()): then its watchers are gone.
            # In a child process, the loop of a thread that did not survive is left alone.
            if stop_watcher and self._loop_alive():
                self._async.close()
        self._give_up()

    def _give_up(self) -> None:
        """Abandon what is queued and cancel the parked waiters of a closed port.

        Runs in the port's thread, or in any thread once its hub has been destroyed (its
        greenlets can no longer park or unpark). Never with a primitive's mutex held.
        """
        with self._lock:
            abandoned = list(self._items)
            self._items.clear()
        if abandoned:
            error = ClosedError(f"thread {self.name!r} ended before the work sent to it ran")
            for item in abandoned:
                try:
                    item.abandon(error)
                except Exception:
                    _log.exception("abandoning work of ended thread %r failed", self.name)
        # After the abandoning: a parked waiter whose wake-up was queued has passed it on
        # already and is no longer in its primitive's deque, so cancelling finds nothing.
        parked, self._parked = list(self._parked), set()
        for waiter in parked:
            try:
                waiter.cancel()
            except Exception:
                _log.exception("cancelling a waiter of ended thread %r failed", self.name)

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``): renew the mutex; close if not the survivor."""
        if stage == RENEW:
            self._lock._at_fork_reinit()  # in place: see _waiter.renew_after_fork
        elif stage == CLOSE and not self.is_current():
            self.close(stop_watcher=False)
        elif stage == RESUME and not self._closed:
            # The survivor. A parked greenlet that a waker took from its deque but whose
            # wake-up may not have been posted when the fork came is woken now (twice at
            # worst, which fire() ignores); the ones still queued are woken, in order, by
            # their primitives (see _fork). Any post also tells the loop about items
            # appended without the watcher being sent.
            for waiter in list(self._parked):
                if not waiter.queued():
                    self.post(waiter)
            with self._lock:
                if self._items:
                    self._async.send()


def port_for(hub: Any, create: bool = False) -> HubPort | None:
    """The port of ``hub``, the current thread's hub; None if it has none yet, unless
    ``create``: then it is made, closing the port of a previous hub of this thread."""
    port: HubPort | None = getattr(_tls, "port", None)
    if port is not None and port.hub is hub:
        return port
    if not create:
        return None
    if port is not None:  # the thread's previous hub was destroyed
        port.close()
    port = _tls.port = HubPort(hub)
    call_at_thread_exit(HubPort, port.close)
    return port


def current_port(name: str | None = None) -> HubPort:
    """The port of the current thread's hub, creating the hub and the port if needed.

    ``name``, if given, names the thread in messages.
    """
    port = port_for(gevent.get_hub(), create=True)
    assert port is not None
    if name is not None:
        port.name = name
    return port

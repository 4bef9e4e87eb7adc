"""Thread: an OS thread running its own gevent hub, steered from any thread.

.. important::
   A :class:`Thread` object may be used from any thread, greenlet or hub: ``start``,
   ``stop``, ``get``, ``spawn``, ``apply`` and ``apply_async``. The functions it is given run
   in greenlets of *its* thread's hub. It is always a real OS thread, also after
   ``gevent.monkey.patch_all()`` (which would turn :class:`threading.Thread` into a greenlet).

Life cycle
----------
``start()`` creates the OS thread and its hub, then runs ``target(*args, **kwargs)`` in a
greenlet of that hub. The thread ends when the target returns or raises, or, without a
target, when ``stop()`` is called. ``stop()`` interrupts a target that is still running (it
gets ``GreenletExit`` at its next blocking point) and every function still running in the
thread; work given to the thread and not yet started fails with
:class:`~sync_primitives.ClosedError`, and so does work given after it ended. ``get()`` waits
for the end and returns the target's value or raises its exception
(:class:`~sync_primitives.ThreadStoppedError` if ``stop()`` interrupted it). In a child
process made by ``fork()`` from another thread, the thread has ended (its target, if it
was running, as if stopped). At interpreter exit, threads still running are stopped and
waited for (``EXIT_TIMEOUT`` seconds in all).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import gevent
import gevent.event

from ._fork import RENEW, RESUME, module_lock, track
from ._hub import HubPort, allocate_native_lock, current_port, start_native_thread
from ._waiter import poll_timeout
from .errors import ClosedError, ThreadStoppedError, WouldDeadlockError
from .event import AsyncResult, Event
from .launcher import Launcher

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger(__name__)
#: Seconds the interpreter's exit waits, in all, for the Threads it stops.
EXIT_TIMEOUT = 10.0
_counter = itertools.count(1)
#: Threads started and not yet ended, for the interpreter's exit (see _stop_all_at_exit).
_running: set[Thread] = set()
_running_lock = module_lock()


@dataclass(frozen=True)
class ThreadStatistics:
    """A snapshot of a :class:`Thread`."""

    name: str
    state: str  #: "new", "running" or "ended"
    tasks_running: int
    tasks_started: int


class _StopRequest:
    """Port item that wakes the thread's main greenlet to end the thread."""

    __slots__ = ("_done",)

    def __init__(self, done: gevent.event.Event) -> None:
        self._done = done

    def fire(self) -> None:
        self._done.set()

    def abandon(self, error: ClosedError) -> None:
        """The thread ended anyway."""


class Thread:
    """An OS thread with its own hub; see the module documentation."""

    def __init__(
        self,
        target: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._target = target
        self._args = args
        self._kwargs = dict(kwargs or {})
        self.name = name or f"sync-thread-{next(_counter)}"
        self._state_lock = allocate_native_lock()
        self._started = False
        self._ready = Event()
        self._ended = Event()
        self._port: HubPort | None = None
        self._launcher: Launcher | None = None
        self._done: gevent.event.Event | None = None
        self._value: Any = None
        self._exception: BaseException | None = None
        self._target_finished = False
        track(self)

    # -- life cycle -------------------------------------------------------------------------

    def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Start the thread; with ``wait``, return once it accepts work.

        Raises:
            RuntimeError: it was started before.
            TimeoutError: ``wait`` and it was not ready within ``timeout`` seconds.
        """
        if timeout is not None:
            poll_timeout(timeout)  # checked before anything happens
        with self._state_lock:
            if self._started:
                raise RuntimeError(f"{self!r} was already started")
            self._started = True
        with _running_lock:
            _running.add(self)
        start_native_thread(self._bootstrap, ())
        if wait and not self._ready.wait(timeout):
            raise TimeoutError(f"{self!r} did not start within {timeout} s")

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """End the thread (see the module documentation); nothing if it has ended.

        Raises:
            RuntimeError: it was never started.
            WouldDeadlockError: ``wait`` from inside the thread itself.
            TimeoutError: ``wait`` and it had not ended within ``timeout`` seconds.
        """
        if timeout is not None:
            poll_timeout(timeout)  # checked before anything happens
        if wait and self._in_own_thread():
            raise WouldDeadlockError(f"{self!r} cannot wait for its own end; use wait=False")
        port = self._wait_ready()
        if port is not None and not self._ended.is_set():
            assert self._done is not None
            port.post(_StopRequest(self._done))
        if wait:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the thread has ended.

        Raises:
            RuntimeError: it was never started.
            WouldDeadlockError: called from inside the thread itself.
            TimeoutError: it had not ended within ``timeout`` seconds.
        """
        self._check_started()
        if self._in_own_thread():
            raise WouldDeadlockError(f"{self!r} cannot wait for its own end")
        if not self._ended.wait(timeout):
            raise TimeoutError(f"{self!r} did not end within {timeout} s")

    def get(self, timeout: float | None = None) -> Any:
        """Wait until the thread has ended; return the target's value or raise its exception.

        Raises:
            ThreadStoppedError: ``stop()`` interrupted the target.
            RuntimeError: it was never started.
            WouldDeadlockError: called from inside the thread itself.
            TimeoutError: it had not ended within ``timeout`` seconds.
            BaseException: whatever the target raised.
        """
        self.join(timeout)
        if self._exception is not None:
            raise self._exception
        return self._value

    def is_alive(self) -> bool:
        return self._started and not self._ended.is_set()

    # -- work -------------------------------------------------------------------------------

    def spawn(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> AsyncResult[T]:
        """Start ``fn(*args, **kwargs)`` in a new greenlet of this thread; never blocks
        (once the thread is ready).

        For work nobody waits for: an exception of ``fn`` is logged, as well as delivered
        by the returned result.

        Raises:
            ClosedError: the thread has ended.
            RuntimeError: it was never started.
        """
        return self._launcher_or_raise().post(fn, args, kwargs, log_errors=True)

    def apply_async(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> AsyncResult[T]:
        """Start ``fn(*args, **kwargs)`` in a new greenlet of this thread; the outcome is
        delivered by the returned result only.

        Raises:
            ClosedError: the thread has ended.
            RuntimeError: it was never started.
        """
        return self._launcher_or_raise().post(fn, args, kwargs, log_errors=False)

    def apply(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` in this thread and return its result (inline when
        called from this thread).

        Raises:
            ClosedError: the thread ended before or during the call.
            RuntimeError: it was never started.
            BaseException: whatever ``fn`` raised.
        """
        return self._launcher_or_raise().apply(fn, *args, **kwargs)

    def statistics(self) -> ThreadStatistics:
        launcher = self._launcher
        stats = launcher.statistics() if launcher is not None else None
        if not self._started:
            state = "new"
        elif self._ended.is_set():
            state = "ended"
        else:
            state = "running"
        return ThreadStatistics(
            name=self.name,
            state=state,
            tasks_running=stats.running if stats else 0,
            tasks_started=stats.started if stats else 0,
        )

    def __repr__(self) -> str:
        return f"<Thread {self.name!r} {self.statistics().state}>"

    # -- internals --------------------------------------------------------------------------

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError(f"{self!r} was never started")

    def _wait_ready(self) -> HubPort | None:
        """The thread's port once it is set up (None if set-up failed)."""
        self._check_started()
        self._ready.wait()  # set by the new thread within milliseconds, also on failure
        return self._port

    def _launcher_or_raise(self) -> Launcher:
        self._wait_ready()
        if self._launcher is None:
            raise ClosedError(f"{self!r} failed to start: {self._exception!r}")
        return self._launcher

    def _in_own_thread(self) -> bool:
        port = self._port
        return port is not None and port.is_current()

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``): a thread other than the forking one has
        ended there (and a target it was running was stopped)."""
        if stage == RENEW:
            self._state_lock._at_fork_reinit()
        elif stage == RESUME and self.is_alive() and not self._in_own_thread():
            if self._target is not None and not self._target_finished:
                self._exception = ThreadStoppedError(
                    f"{self!r} does not run in this child process: only the thread that "
                    "called fork() does"
                )
            with _running_lock:
                _running.discard(self)
            self._ready.set()
            self._ended.set()

    def _bootstrap(self) -> None:
        """The body of the OS thread."""
        try:
            hub = gevent.get_hub()
            port = current_port(self.name)
            launcher = Launcher()
            done = gevent.event.Event()
            target = None
            if self._target is not None:
                target = gevent.spawn(self._run_target)
                target.link(lambda _: done.set())
        except BaseException as exc:
            _log.exception("%r failed to start", self)
            self._exception = exc
            with _running_lock:
                _running.discard(self)
            self._ready.set()
            self._ended.set()
            return
        self._port, self._launcher, self._done = port, launcher, done
        self._ready.set()
        try:
            # A running Thread waits for work from other threads: without this hold its
            # loop would have nothing referenced and done.wait() would raise LoopExit.
            port.hold()
            try:
                done.wait()
            finally:
                port.unhold()
            launcher.close()  # new work fails from here on; running work is stopped below
            if target is not None and not target.dead:
                target.kill(block=True)
            if target is not None and not self._target_finished:  # also: killed unstarted
                self._exception = ThreadStoppedError(
                    f"{self!r} was stopped before its target returned"
                )
            launcher.kill_running()
        except BaseException:
            _log.exception("%r failed while ending", self)
        finally:
            port.close()  # abandons whatever is still queued: it fails, it does not vanish
            try:
                hub.destroy(destroy_loop=True)
                _release_hub(hub)
            finally:
                with _running_lock:
                    _running.discard(self)
                self._ended.set()

    def _run_target(self) -> None:
        assert self._target is not None
        try:
            self._value = self._target(*self._args, **self._kwargs)
        except gevent.GreenletExit:
            return  # stop(): _bootstrap records ThreadStoppedError
        except BaseException as exc:
            _log.exception("the target of %r raised", self)
            self._exception = exc
        self._target_finished = True


def _release_hub(hub: gevent.hub.Hub) -> None:
    """End a destroyed hub's greenlet, which ``destroy()`` leaves parked in the middle of
    throwing ``LoopExit`` to this thread's main greenlet (gevent issue 1601): that
    exception's traceback and the greenlet's frames form a cycle inside greenlet's C state,
    which the garbage collector cannot break, and it keeps about 25 KB alive per thread
    ended. Thrown into the parked greenlet, ``GreenletExit`` ends it; nothing of the
    destroyed loop runs on the way out."""
    if not hub.dead:
        hub.throw(gevent.GreenletExit)


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop the Threads still running when the interpreter exits, and wait for their end.

    A Thread's OS thread is not a ``threading`` thread, so the interpreter would not wait
    for it: one still ending its hub while the interpreter tears itself down can crash the
    process (greenlet frees its references with no interpreter left). Each gets ``stop()``
    (its target and work are interrupted, as documented) and the whole set EXIT_TIMEOUT
    seconds to end.
    """
    with _running_lock:
        threads = list(_running)
    deadline = time.monotonic() + EXIT_TIMEOUT
    for thread in threads:
        if not thread._in_own_thread():
            thread.stop(wait=False)
    for thread in threads:
        if not thread._in_own_thread():
            thread._ended.wait(max(0.0, deadline - time.monotonic()))

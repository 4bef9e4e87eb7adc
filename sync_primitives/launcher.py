"""Launcher: call a function in one thread's hub from any thread, with arguments and result.

.. important::
   A launcher belongs to the thread that created it: every function it is given runs in a
   new greenlet of that thread's hub (which the thread must be running, i.e. blocked in
   gevent). ``apply`` and ``apply_async`` may be called from any thread, greenlet or hub.

Functions start in the order they were given. Each runs in its own greenlet, so one that
blocks does not hold up the next, and a chain of launchers calling back into each other's
threads cannot deadlock. ``apply`` from the launcher's own thread calls the function inline
instead of waiting for itself. Work given to a launcher whose thread has ended fails with
:class:`~sync_primitives.ClosedError`: at once if the thread had already ended, through the
returned :class:`~sync_primitives.AsyncResult` if it ended before the work could start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import gevent

from ._fork import RESUME, track
from ._hub import HubPort, current_port
from .errors import ClosedError
from .event import AsyncResult

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LauncherStatistics:
    """A snapshot of a :class:`Launcher`."""

    thread: str
    running: int
    started: int
    closed: bool


class Task:
    """One function call posted to a hub; its outcome goes to :attr:`result`."""

    __slots__ = ("_args", "_fn", "_kwargs", "_launcher", "_log_errors", "result")

    def __init__(
        self,
        launcher: Launcher,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        log_errors: bool,
    ) -> None:
        self._launcher = launcher
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._log_errors = log_errors
        self.result: AsyncResult[Any] = AsyncResult()

    def fire(self) -> None:
        self._launcher.start_task(self)

    def abandon(self, error: ClosedError) -> None:
        self.result._resolve(None, error)

    def run(self) -> None:
        try:
            value = self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # every outcome, GreenletExit included, goes to the caller
            if self._log_errors and not isinstance(exc, gevent.GreenletExit):
                _log.exception("%s raised in thread %r", self, self._launcher.thread_name)
            self.result._resolve(None, exc)
        else:
            self.result._resolve(value, None)

    def __str__(self) -> str:
        return getattr(self._fn, "__qualname__", repr(self._fn))


class Launcher:
    """Run functions in the hub of the thread that created the launcher."""

    __slots__ = ("__weakref__", "_closed", "_port", "_running", "_started")

    def __init__(self) -> None:
        self._port: HubPort = current_port()
        self._running: dict[Any, Task] = {}  # greenlet -> its task, started or not yet
        self._started = 0
        self._closed = False
        track(self)

    @property
    def thread_name(self) -> str:
        return self._port.name

    def apply_async(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> AsyncResult[T]:
        """Start ``fn(*args, **kwargs)`` in the launcher's thread; never blocks.

        The exception of ``fn``, if any, is delivered by the result's ``get()`` only.

        Raises:
            ClosedError: the launcher's thread has ended.
        """
        return self.post(fn, args, kwargs, log_errors=False)

    def apply(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` in the launcher's thread and return its result.

        Called from the launcher's own thread, ``fn`` runs inline in the calling greenlet.

        Raises:
            ClosedError: the launcher's thread has ended, before or during the call.
            BaseException: whatever ``fn`` raised.
        """
        if self._port.is_current():  # the port, not the thread ident, which is reused
            return fn(*args, **kwargs)
        return self.apply_async(fn, *args, **kwargs).get()

    def post(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        log_errors: bool,
    ) -> AsyncResult[Any]:
        """Queue ``fn`` as a :class:`Task`; ``log_errors`` also logs what it raises.

        Raises:
            ClosedError: the launcher's thread has ended.
        """
        task = Task(self, fn, args, kwargs, log_errors)
        if self._closed:
            raise ClosedError(
                f"cannot run {task}: thread {self._port.name!r} no longer accepts work "
                "(it is ending or has ended)"
            )
        self._port.post_or_raise(task, f"run {task}")
        return task.result

    def close(self) -> None:
        """Refuse new work; work already given and not yet started fails with ClosedError.

        Work already running goes on (see :meth:`kill_running`).
        """
        self._closed = True

    def start_task(self, task: Task) -> None:
        """In the hub greenlet: start ``task`` in a greenlet of its own."""
        if self._closed:
            task.abandon(ClosedError(f"{self!r} was closed before {task} could start"))
            return
        self._started += 1
        greenlet = gevent.spawn(self._run_task, task)
        self._running[greenlet] = task

    def _run_task(self, task: Task) -> None:
        try:
            task.run()
        finally:
            self._running.pop(gevent.getcurrent(), None)

    def kill_running(self) -> None:
        """Raise ``GreenletExit`` in every running task and wait for them to end.

        A task whose greenlet is killed before it started never runs: its result gets
        :class:`ClosedError`. Called in the launcher's thread, outside the hub greenlet.
        """
        while self._running:
            greenlets = list(self._running)
            gevent.killall(greenlets, block=True)
            # All dead now, whether they ever ran or not.
            stopped = [t for g in greenlets if (t := self._running.pop(g, None)) is not None]
            self._fail_unfinished(stopped, "was stopped before it could start")

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``): the work its thread had taken on, started or
        not, will never end there; it fails with :class:`ClosedError`."""
        if stage == RESUME and not self._port.is_current():
            self._closed = True
            self._fail_unfinished(
                list(self._running.values()),
                "cannot run in this child process: only the thread that called fork() does",
            )
            self._running.clear()

    def _fail_unfinished(self, tasks: list[Task], why: str) -> None:
        """``ClosedError`` for each of ``tasks`` that has no outcome yet: it never ran, or
        will never finish; the message names the task and ``why``."""
        for task in tasks:
            if not task.result.ready():
                task.abandon(ClosedError(f"{self!r}: {task} {why}"))

    def statistics(self) -> LauncherStatistics:
        return LauncherStatistics(
            thread=self._port.name,
            running=len(self._running),
            started=self._started,
            closed=self._closed or self._port.closed,
        )

    def __repr__(self) -> str:
        return f"<Launcher in {self._port.name!r}>"

"""HubTrigger: make a function run in one thread's hub, from any thread.

.. important::
   A trigger belongs to the thread that created it: ``func`` always runs there, in that
   thread's hub (which the thread must be running, i.e. blocked in gevent, for ``func`` to
   run). ``send()`` and ``close()`` may be called from any thread, greenlet or hub.

No arguments go in and no result comes out: that is :class:`~sync_primitives.Launcher`.
Sends coalesce. Every ``send()`` is followed by at least one complete run of ``func`` that
starts after it, and runs never overlap; sends made while a run is pending, or in progress,
cost one more run at the most.

The pending flag needs no lock
------------------------------
``send()`` posts to the hub only when it sets ``_pending``; the hub clears ``_pending``
*before* it calls ``func``. A sender that finds ``_pending`` already set (and posts nothing)
therefore knows that a run has yet to start, and that run sees whatever the sender did
before sending. Two senders racing on a clear flag both post: one extra run, never a lost
one. The GIL orders these single-attribute reads and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from ._hub import current_port
from .errors import ClosedError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerStatistics:
    """A snapshot of a :class:`HubTrigger`."""

    thread: str
    runs: int
    pending: bool
    running: bool
    closed: bool


class HubTrigger:
    """Run ``func()`` in the hub of the creating thread whenever :meth:`send` is called.

    With ``blocking=False`` (the default) each run happens in a greenlet of its own, so
    ``func`` may block cooperatively. With ``blocking=True`` it runs directly in the hub
    greenlet: cheaper, but ``func`` must not block. Exceptions raised by ``func`` are logged
    and the trigger stays usable.
    """

    __slots__ = (
        "__weakref__",
        "_blocking",
        "_closed",
        "_func",
        "_pending",
        "_port",
        "_rerun",
        "_runner",
        "_runs",
    )

    def __init__(self, func: Callable[[], Any], blocking: bool = False) -> None:
        self._func = func
        self._blocking = blocking
        self._port = current_port()
        self._pending = False
        self._closed = False
        self._runner: Any = None
        self._rerun = False
        self._runs = 0

    def send(self) -> None:
        """Have ``func`` run (again) in the trigger's hub; never blocks.

        Raises:
            ClosedError: the trigger was closed, or its thread has ended.
        """
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._pending:
            return
        self._pending = True
        if not self._port.post(self):
            self._pending = False
            raise ClosedError(f"cannot send {self!r}: thread {self._port.name!r} has ended")

    def close(self) -> None:
        """Refuse further sends; a pending run is dropped, a run in progress finishes."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def fire(self) -> None:
        """Called by the port in the hub greenlet."""
        self._pending = False
        if self._closed:
            return
        if self._blocking:
            self._call()
        elif self._runner is not None:
            self._rerun = True  # the running greenlet goes round once more
        else:
            self._runner = gevent.spawn_raw(self._run)

    def abandon(self, error: ClosedError) -> None:
        """The thread ended with a run still pending."""
        self._pending = False
        if not self._closed:
            _log.warning("%r was sent but never ran: %s", self, error)

    def _run(self) -> None:
        try:
            while True:
                self._rerun = False
                self._call()
                if not self._rerun or self._closed:
                    return
        finally:
            self._runner = None

    def _call(self) -> None:
        self._runs += 1
        try:
            self._func()
        except Exception:
            _log.exception("%r: the triggered function raised", self)

    def statistics(self) -> TriggerStatistics:
        return TriggerStatistics(
            thread=self._port.name,
            runs=self._runs,
            pending=self._pending,
            running=self._runner is not None,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        name = getattr(self._func, "__qualname__", repr(self._func))
        return f"<HubTrigger {name} in {self._port.name!r}>"

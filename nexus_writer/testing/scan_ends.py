"""The ends of scans as a writer reports them, and waits for one: what
:class:`~nexus_writer.testing.running_writer.RunningWriter` and
:class:`~nexus_writer.testing.device_writer.DeviceWriter` share.

.. important::
   :meth:`ScanEnds.record` and :meth:`ScanEnds.close` are called in the thread that hears
   the writer (its hub, or Tango's event threads); :meth:`ScanEnds.wait` from any thread.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from sync_primitives import Event, Lock

End = TypeVar("End")


class ScanEnds(Generic[End]):
    """Each scan's end, by key (the latest reported), until the writer is gone; ``name``
    (the writer's) starts the messages."""

    def __init__(self, name: str = "") -> None:
        self._prefix = f"{name}: " if name else ""
        self._lock = Lock()
        self._ended: dict[str, End] = {}
        self._waits: dict[str, Event] = {}
        self._closed = False

    def record(self, key: str, end: End) -> None:
        """Scan ``key`` has ended: wake who waits for it."""
        with self._lock:
            self._ended[key] = end
            wait = self._waits.get(key)
        if wait is not None:
            wait.set()

    def close(self) -> None:
        """The writer is gone: nothing more will end; wake every waiter, now and later."""
        with self._lock:
            self._closed = True
            waits = list(self._waits.values())
        for wait in waits:
            wait.set()

    def wait(self, key: str, timeout: float) -> End | None:
        """The end of scan ``key`` once it has ended; None if the writer went first.

        Raises:
            TimeoutError: the scan had not ended within ``timeout`` seconds.
        """
        with self._lock:
            end = self._ended.get(key)
            if end is not None:
                return end
            wait = self._waits.setdefault(key, Event())
            if self._closed:
                wait.set()
        if not wait.wait(timeout):
            raise TimeoutError(f"{self._prefix}scan {key!r} was not written within {timeout} s")
        with self._lock:
            return self._ended.get(key)

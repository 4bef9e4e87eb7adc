"""A writer service for tests: :class:`RunningWriter` runs a :class:`WriterService` on one
session in a thread of its own, says when it is ready, and waits for scans to be written on
the writer's own signal (its ``on_scan`` events), never by polling files.

.. important::
   The service runs in a :class:`sync_primitives.Thread` with its own gevent hub, so that a
   test needs no gevent of its own. Every method of :class:`RunningWriter` may be called
   from any thread (a test's main thread, a greenlet of another hub); ``on_scan`` events are
   recorded in the writer's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import gevent

from nexus_writer.nexus.options import Compression, WriterOptions
from nexus_writer.protocol import DEFAULT_PREFIX, SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.service import Role, WriterService
from nexus_writer.session_writer import ScanEvent
from nexus_writer.simulator import Beamline, Detectors
from sync_primitives import Event, Lock, Thread

from .errors import WriterStoppedError
from .scan_ends import ScanEnds
from .written_scan import WrittenScan, read_ended_scan


class RunningWriter:
    """A :class:`WriterService` on ``session``, writing below ``roots``, in its own thread.

    Use as a context manager, or :meth:`start` and :meth:`stop`. ``options`` replaces the
    options made of ``roots`` and ``compression``; ``service_options`` are more keyword
    arguments of :class:`WriterService` (``scan_mode``, ``lease_ttl``, ``readings``...).
    """

    def __init__(
        self,
        redis_url: str,
        session: str,
        roots: Sequence[str | Path],
        *,
        compression: Compression = Compression.BITSHUFFLE_LZ4,
        options: WriterOptions | None = None,
        prefix: str = DEFAULT_PREFIX,
        **service_options: Any,
    ) -> None:
        self.redis_url = redis_url
        self.session = session
        self.roots = tuple(Path(root) for root in roots)
        self.prefix = prefix
        self.options = options or WriterOptions(roots=self.roots, compression=compression)
        self._service_options = service_options
        self.service: WriterService | None = None
        self.exit_status: int | None = None
        self._thread: Thread | None = None
        self._lock = Lock()
        self._events: list[ScanEvent] = []
        self._ends = ScanEnds[ScanEvent]()
        self._stopped = Event()
        self._settled = Event()  # ready, or stopped: start() waits for one of them
        self._failure: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RunningWriter:
        """Start the service; return once it is ready (every scan announced from now on is
        written).

        Raises:
            RuntimeError: it was started before.
            WriterStoppedError: the service stopped, was not ready within ``timeout``, or
                stands by (another writer writes the session).
        """
        if self._thread is not None:
            raise RuntimeError(f"the writer of session {self.session!r} was started before")
        client = connect(self.redis_url)
        self.service = WriterService(
            client,
            self.session,
            self.options,
            prefix=self.prefix,
            on_scan=self._on_scan,
            **self._service_options,
        )
        self._thread = Thread(name=f"nexus-writer {self.session}", target=self._serve)
        self._thread.start(timeout=timeout)
        ready = self.service.ready
        if not self._settled.wait(timeout):
            self.stop()
            raise WriterStoppedError(
                f"the writer of session {self.session!r} was not ready within {timeout} s: "
                f"{self.service.statistics().problem or 'no problem reported'}"
            )
        if not ready.is_set():
            self.stop()
            raise WriterStoppedError(
                f"the writer of session {self.session!r} stopped at start: {self._failure}"
            )
        if self.service.role is Role.STANDBY:  # another writer has the session
            holder = self.service.statistics().holder or "another service"
            self.stop()
            raise WriterStoppedError(
                f"the writer of session {self.session!r} stands by: the session is written "
                f"by {holder}"
            )
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the service and its thread; nothing if it is stopped. A scan still running
        ends with what was received, status STOPPED (left unfinished: the next writer of
        the session writes it again). Returns the service's exit status (0, or 1 if the
        session writer ended in FAULT).

        Raises:
            TimeoutError: the service had not stopped within ``timeout`` seconds.
        """
        if self._thread is None or self.service is None:
            return self.exit_status
        self.service.stop()
        if not self._stopped.wait(timeout):
            raise TimeoutError(
                f"the writer of session {self.session!r} did not stop in {timeout} s"
            )
        self._thread.stop(timeout=timeout)
        self.service.client.close()
        return self.exit_status

    def __enter__(self) -> RunningWriter:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        """The thread's target: the service, until stopped."""
        service = self.service
        assert service is not None
        watcher = gevent.spawn(self._settle_when_ready, service)
        try:
            self.exit_status = service.run()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            watcher.kill()
            self._stopped.set()
            self._settled.set()
            self._ends.close()  # wakes every waiter: nothing more will end

    def _settle_when_ready(self, service: WriterService) -> None:
        service.ready.wait()
        self._settled.set()

    # -- scans -----------------------------------------------------------------------------

    def _on_scan(self, event: ScanEvent) -> None:
        """In the writer's thread: record the event, wake who waits for that scan."""
        with self._lock:
            self._events.append(event)
        if event.kind == "ended":
            self._ends.record(event.key, event)

    def scan_events(self) -> list[ScanEvent]:
        """Every scan start and end so far, in order."""
        with self._lock:
            return list(self._events)

    def wait_for_end(self, key: str, timeout: float = 60.0) -> ScanEvent:
        """The writer's event for the end of scan ``key``, once it has ended.

        Raises:
            TimeoutError: the scan had not ended within ``timeout`` seconds.
            WriterStoppedError: the service stopped first.
        """
        ended = self._ends.wait(key, timeout)
        if ended is None:
            raise WriterStoppedError(
                f"the writer of session {self.session!r} stopped before scan {key!r} ended "
                f"(exit status {self.exit_status}, {self._failure or 'stopped'})"
            )
        return ended

    def wait_for_scan(self, key: str, timeout: float = 60.0) -> WrittenScan:
        """Wait until the writer has ended scan ``key``, then read its entry.

        A scan stopped before its end (the writer was stopped) has an entry whose status
        is STOPPED: it is returned.

        Raises:
            TimeoutError: the scan had not ended within ``timeout`` seconds.
            WriterStoppedError: the service stopped first.
            ScanNotWrittenError: the scan ended without an entry (the reason is given).
        """
        ended = self.wait_for_end(key, timeout)
        return read_ended_scan(key, ended.state, ended.reason, ended.url)

    # -- publishing ------------------------------------------------------------------------

    def publisher(self) -> SessionPublisher:
        """A publisher of this writer's session, with a Redis client of its own."""
        return SessionPublisher(connect(self.redis_url), self.session, prefix=self.prefix)

    def beamline(self, detectors: Detectors | None = None, record: bool = True) -> Beamline:
        """The simulator, publishing into this writer's session, files below its first root."""
        return Beamline(
            self.publisher(), root=str(self.roots[0]), detectors=detectors, record=record
        )

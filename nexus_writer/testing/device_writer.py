"""A NexusWriter device for tests: :class:`DeviceWriter` registers one in a Tango database,
runs ``NexusWriterService`` as a process of its own, and waits for the device and its
scans on the device's own change events (State, ``recent_scans``), never by polling.

.. important::
   Needs the ``tango`` extra. The server is a child process, stopped by :meth:`stop` (and
   by the ``with`` block); the change events arrive in Tango's own threads, where they are
   only recorded. Every method may be called from any thread.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import tango

from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.simulator import Beamline, Detectors
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.server import SERVER
from sync_primitives import Event

from .errors import WriterStoppedError
from .scan_ends import ScanEnds
from .written_scan import WrittenScan, read_ended_scan

_devices = itertools.count(1)


class DeviceWriter:
    """A NexusWriter device of ``session`` in ``database``, writing below ``roots``.

    ``device`` and ``server`` (the instance name) default to names of this process's own;
    ``properties`` are more device properties (``compression``, ``attributes``...).
    """

    def __init__(
        self,
        database: EmbeddedTangoDatabase,
        redis_url: str,
        session: str,
        roots: Sequence[str | Path],
        *,
        device: str | None = None,
        server: str | None = None,
        properties: dict[str, str | list[str]] | None = None,
    ) -> None:
        number = next(_devices)
        self.database = database
        self.redis_url = redis_url
        self.session = session
        self.roots = tuple(Path(root) for root in roots)
        self.device = device or f"test/nexuswriter/{os.getpid()}-{number}"
        self.server = server or f"test{os.getpid()}-{number}"
        self.properties = dict(properties or {})
        self.proxy: tango.DeviceProxy | None = None
        self._process: DeviceServer | None = None
        self._state_changed = Event()
        self._state: tango.DevState | None = None
        self._ends = ScanEnds[dict[str, Any]](self.device)
        self._subscriptions: list[int] = []

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> DeviceWriter:
        """Register the device, start its server, and return once the device is ON.

        When start() fails, it stops the server and ends the subscriptions it made before
        it raises. A writer stopped (or whose start failed) may be started again.

        Raises:
            RuntimeError: it is running (started, and not stopped since).
            TangoServerError: the server did not start (its last output is in the message).
            WriterStoppedError: the device was not ON within ``timeout`` seconds, or it
                stands by (another writer writes the session).
            tango.DevFailed: the device's events could not be subscribed to.
        """
        if self._process is not None:
            raise RuntimeError(f"{self.device} is running: stop() it before starting it again")
        self._state = None
        self._state_changed.clear()
        self._ends = ScanEnds[dict[str, Any]](self.device)
        properties: dict[str, str | list[str]] = {
            "session": self.session,
            "redis_url": self.redis_url,
            "roots": [str(root) for root in self.roots],
            **self.properties,
        }
        self.database.add_device(f"{SERVER}/{self.server}", "NexusWriter", self.device, properties)
        try:
            self._process = DeviceServer(
                [sys.executable, "-m", "nexus_writer.tango.server", self.server],
                tango_host=self.database.tango_host,
                startup_timeout=timeout,
            ).start()
            proxy = self.proxy = tango.DeviceProxy(self.database.trl(self.device))
            # One at a time, so that stop() ends those made: a subscribed proxy let go while
            # its events flow can crash the process (docs/tango-events.md, pitfall 5).
            for name, callback in (("State", self._on_state), ("recent_scans", self._on_recent)):
                self._subscriptions.append(
                    proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, callback)
                )
            self._wait_until_on(proxy, timeout)
        except BaseException:  # a refusal, a time-out, Ctrl-C: no server left behind
            self.stop()
            raise
        return self

    def _wait_until_on(self, proxy: tango.DeviceProxy, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._state != tango.DevState.ON:
            self._state_changed.clear()
            if self._state == tango.DevState.ON:
                break
            if self._state == tango.DevState.STANDBY:  # another writer has the session
                raise WriterStoppedError(f"{self.device} stands by: {proxy.status()}")
            if not self._state_changed.wait(max(0.0, deadline - time.monotonic())):
                raise WriterStoppedError(
                    f"{self.device} was not ON within {timeout} s (it is {self._state})"
                )

    def stop(self, timeout: float = 30.0) -> None:
        """End the subscriptions, stop the device's server; nothing if it is stopped.
        Interrupted, it can be called again to finish."""
        proxy = self.proxy
        if proxy is not None:
            # The proxy is let go only once it has no subscription left (pitfall 5); an id
            # is forgotten only once it is unsubscribed (KeyError: PyTango had already
            # forgotten it, in a call interrupted after that).
            while self._subscriptions:
                with contextlib.suppress(tango.DevFailed, KeyError):  # DevFailed: server gone
                    proxy.unsubscribe_event(self._subscriptions[-1])
                self._subscriptions.pop()
            self.proxy = None
        if self._process is not None:
            self._process.stop(timeout)  # interrupted, it is still ours to stop again
            self._process = None
        self._ends.close()

    def __enter__(self) -> DeviceWriter:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- events (in Tango's threads) -------------------------------------------------------

    def _on_state(self, event: Any) -> None:
        if not event.err:
            self._state = event.attr_value.value
        self._state_changed.set()

    def _on_recent(self, event: Any) -> None:
        if event.err:
            return
        for scan in json.loads(event.attr_value.value):
            if scan.get("kind") == "ended":
                self._ends.record(scan["key"], scan)

    # -- scans -----------------------------------------------------------------------------

    def wait_for_scan(self, key: str, timeout: float = 60.0) -> WrittenScan:
        """Wait until the device lists scan ``key`` among its finished scans, then read its
        entry.

        A scan stopped before its end has an entry whose status is STOPPED: it is returned.

        Raises:
            TimeoutError: the scan had not ended within ``timeout`` seconds.
            WriterStoppedError: the device was stopped first.
            ScanNotWrittenError: the scan ended without an entry (the reason is given).
        """
        ended = self._ends.wait(key, timeout)
        if ended is None:
            raise WriterStoppedError(f"{self.device} stopped before scan {key!r} ended")
        return read_ended_scan(key, ended.get("state", ""), ended.get("reason"), ended.get("url"))

    # -- publishing ------------------------------------------------------------------------

    def publisher(self) -> SessionPublisher:
        """A publisher of this device's session, with a Redis client of its own."""
        return SessionPublisher(connect(self.redis_url), self.session)

    def beamline(self, detectors: Detectors | None = None, record: bool = True) -> Beamline:
        """The simulator, publishing into this device's session, files below its first root."""
        return Beamline(
            self.publisher(), root=str(self.roots[0]), detectors=detectors, record=record
        )

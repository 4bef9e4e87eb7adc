"""An embedded Tango database (sqlite, on loopback) and device servers of our own.

.. important::
   These objects may be started and stopped from any thread. Each server is a child
   process; its output is drained by a daemon thread of its own. Everything is stopped by
   ``stop()``, by the ``with`` block, when the object is garbage-collected, or at
   interpreter exit, whichever comes first.

The database is PyTango's own (``python -m tango.databaseds.database``) on a sqlite file in a
temporary directory, so nothing but PyTango is needed; it listens on 127.0.0.1. Device
servers are started with ``-ORBendPoint giop:tcp:127.0.0.1:0`` so that their CORBA and
event sockets bind to loopback too. ``TANGO_HOST`` is given to each child; the calling
process uses :attr:`EmbeddedTangoDatabase.tango_host` (or full ``tango://`` names).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import tango

from nexus_writer.child_process import ChildServer, ChildStartError, free_port, start_child

_log = logging.getLogger(__name__)

#: What a device server prints once it serves requests.
SERVER_READY = "Ready to accept request"


class TangoServerError(RuntimeError):
    """The embedded database or a device server did not start; the message says why."""


class EmbeddedTangoDatabase(ChildServer):
    """A Tango database server of our own on a sqlite file. Use as a context manager, or
    start()/stop()."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        super().__init__()
        self.startup_timeout = startup_timeout
        self._port: int | None = None

    @property
    def tango_host(self) -> str:
        """``127.0.0.1:PORT``: the ``TANGO_HOST`` of this database.

        Raises:
            TangoServerError: it is not running.
        """
        if self._port is None:
            raise TangoServerError("the embedded Tango database is not running")
        return f"127.0.0.1:{self._port}"

    def trl(self, device: str) -> str:
        """The full name of ``device`` in this database: ``tango://127.0.0.1:PORT/a/b/c``."""
        return f"tango://{self.tango_host}/{device}"

    def start(self) -> EmbeddedTangoDatabase:
        """Start the database and return once it answers.

        Raises:
            TangoServerError: it did not start; the message holds its last output.
        """
        if self._process is not None:
            raise TangoServerError("the embedded Tango database is already running")
        self._directory = tempfile.mkdtemp(prefix="nexus-writer-tango-")
        for attempt in range(3):  # a free port can be taken meanwhile
            self._port = free_port()
            args = [
                sys.executable,
                "-m",
                "tango.databaseds.database",
                "--host",
                "127.0.0.1",
                "--port",
                str(self._port),
                "2",
            ]
            try:
                process, _ = start_child(
                    args,
                    name="Tango database",
                    is_ready=lambda line: SERVER_READY in line,
                    timeout=self.startup_timeout,
                    env={
                        "PYTANGO_DATABASE_NAME": str(Path(self._directory) / "tango.sqlite"),
                        "TANGO_HOST": f"127.0.0.1:{self._port}",
                    },
                )
            except ChildStartError as error:
                if attempt == 2:
                    self.stop()
                    raise TangoServerError(str(error)) from None
                continue
            self._adopt(process)
            _log.info("embedded Tango database (pid %d) at %s", process.pid, self.tango_host)
            return self
        return self  # not reached

    def database(self) -> tango.Database:
        """A client of this database."""
        host, port = self.tango_host.split(":")
        return tango.Database(host, int(port))

    def add_device(
        self,
        server: str,
        device_class: str,
        device: str,
        properties: Mapping[str, Sequence[str] | str] | None = None,
    ) -> None:
        """Define ``device`` of ``device_class`` in ``server`` (``Name/instance``), with
        device ``properties``. Defining it again changes nothing but the properties."""
        info = tango.DbDevInfo()
        info.name, info._class, info.server = device, device_class, server
        database = self.database()
        database.add_device(info)
        if properties:
            database.put_device_property(
                device,
                {k: [v] if isinstance(v, str) else list(v) for k, v in properties.items()},
            )

    def start_server(
        self,
        script: str | Path,
        instance: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        startup_timeout: float | None = None,
    ) -> DeviceServer:
        """Start ``python script instance *args`` as a device server of this database (its
        devices must be defined) and return once it serves requests.

        Raises:
            TangoServerError: it did not start; the message holds its last output.
        """
        return DeviceServer(
            [sys.executable, str(script), instance, *args],
            tango_host=self.tango_host,
            env=env,
            startup_timeout=startup_timeout or self.startup_timeout,
        ).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the database and remove its files; nothing if it is not running."""
        super().stop(timeout)
        self._port = None


class DeviceServer(ChildServer):
    """One device server process, on loopback endpoints."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        tango_host: str,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.name = "device server " + " ".join(Path(a).name for a in args[1:3])
        self.args = [*args, "-ORBendPoint", "giop:tcp:127.0.0.1:0"]
        self.env = {**(env or {}), "TANGO_HOST": tango_host}
        self.startup_timeout = startup_timeout
        self.output: list[str] = []

    def start(self) -> DeviceServer:
        """Start it and return once it serves requests.

        Raises:
            TangoServerError: it did not start; the message holds its last output.
        """
        started = time.monotonic()
        try:
            process, self.output = start_child(
                self.args,
                name=self.name,
                is_ready=lambda line: SERVER_READY in line,
                timeout=self.startup_timeout,
                env=self.env,
            )
        except ChildStartError as error:
            raise TangoServerError(str(error)) from None
        self._adopt(process)
        _log.info(
            "%s (pid %d) ready in %.1f s",
            self.name,
            process.pid,
            time.monotonic() - started,
        )
        return self

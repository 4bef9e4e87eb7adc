"""Redis connections from a URL: ``redis://``, ``rediss://`` (TLS) and ``unix://``.

.. important::
   A client (and its connection pool) may be shared by threads; each blocking read takes a
   connection of its own from the pool. In a greenlet of any thread's gevent hub, a
   command waits for Redis's answer cooperatively (without monkey-patching): the hub's
   other greenlets, a Tango device's requests among them, run on meanwhile.

User and password go in the URL (``redis://user:password@host:6379/0``,
``unix://user:password@/path/redis.sock?db=0``); TLS options as query parameters
(``rediss://host:6380?ssl_ca_certs=/path/ca.pem``), as redis-py reads them.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent.socket
import redis

from nexus_writer.green import in_greenlet
from sync_primitives import Event

#: Seconds Redis may take to answer a command (or to accept a connection) before it
#: counts as unreachable (redis.TimeoutError); a URL's ``?socket_timeout=`` overrides it.
#: Blocking reads (XREAD ... BLOCK) wait their BLOCK time beyond it.
SOCKET_TIMEOUT = 10.0
#: Connections a client's pool may open at once (redis-py's default, 100, made the 101st
#: concurrent command fail with "Too many connections"): Redis's own default limit of
#: clients. A URL's ``?max_connections=`` overrides it; with all in use, a command waits
#: for one (:class:`WaitingConnectionPool`).
MAX_CONNECTIONS = 10_000


class _Cooperative:
    """A connection that, in a greenlet, waits for the answer by yielding to its hub.

    redis-py's sockets block the whole thread while Redis is slow or frozen (SIGSTOP, a
    stalled VM, a full network buffer); a hub blocked that way serves nothing else."""

    _sock: Any
    socket_timeout: float | None

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        sock = self._sock
        if sock is not None and in_greenlet() and not self.can_read(timeout=0):
            timeout = kwargs.get("timeout")
            if not isinstance(timeout, int | float):  # redis-py's "not given"
                timeout = self.socket_timeout
            try:
                gevent.socket.wait_read(sock.fileno(), timeout=timeout)
            except BaseException as exc:
                # The answer may still come; whoever takes this connection next would read
                # it as the answer to its own command. A greenlet killed here, or a
                # gevent.Timeout, must spoil the connection as much as our own timeout.
                self.disconnect()
                if isinstance(exc, TimeoutError):
                    raise redis.TimeoutError(f"Redis did not answer within {timeout} s") from None
                raise
        return super().read_response(*args, **kwargs)  # type: ignore[misc]

    if TYPE_CHECKING:  # redis-py's, beside this class in the connection classes below

        def can_read(self, timeout: float = 0) -> bool: ...

        def disconnect(self, *args: Any) -> None: ...


class _CooperativeTCP(redis.Connection):
    """A TCP connection that, in a greenlet, connects by yielding to its hub (a server
    that does not accept, a network that drops packets: up to the connect timeout)."""

    def _connect(self) -> socket.socket:
        if not in_greenlet():
            return super()._connect()  # type: ignore[no-untyped-call,no-any-return]
        error: OSError | None = None
        for family, kind, proto, _, address in gevent.socket.getaddrinfo(
            self.host, self.port, self.socket_type, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for option, value in self.socket_keepalive_options.items():
                        sock.setsockopt(socket.IPPROTO_TCP, option, value)
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                    gevent.socket.wait_write(sock.fileno(), timeout=self.socket_connect_timeout)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                sock.settimeout(self.socket_timeout)
                return sock
            except OSError as exc:  # a timeout too: redis-py says which
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"no address found for {self.host}")


class CooperativeConnection(_Cooperative, _CooperativeTCP):
    """TCP (``redis://``)."""


class CooperativeSSLConnection(_Cooperative, redis.SSLConnection, _CooperativeTCP):
    """TLS (``rediss://``): redis-py's TLS over the cooperative TCP connection."""


class CooperativeUnixConnection(_Cooperative, redis.UnixDomainSocketConnection):
    """A Unix socket (``unix://``)."""


class WaitingConnectionPool(redis.ConnectionPool):
    """A pool that, with all its connections in use, waits for one to be released (in a
    greenlet, yielding to its hub) up to the socket timeout, instead of failing at once
    with "Too many connections"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._released = Event()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection of the pool.

        Raises:
            redis.exceptions.MaxConnectionsError: none was released within the socket
                timeout.
        """
        timeout = self.connection_kwargs.get("socket_timeout") or SOCKET_TIMEOUT
        deadline = time.monotonic() + timeout
        while True:
            self._released.clear()  # before trying: a release after it sets it again
            try:
                return super().get_connection(*args, **kwargs)
            except redis.exceptions.MaxConnectionsError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                self._released.wait(remaining)

    def release(self, connection: Any) -> None:
        super().release(connection)
        self._released.set()


_CONNECTIONS: dict[str, type[redis.Connection] | type[redis.UnixDomainSocketConnection]] = {
    "redis": CooperativeConnection,
    "rediss": CooperativeSSLConnection,
    "unix": CooperativeUnixConnection,
}


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` that returns bytes, as the protocol's readers need, and whose
    commands wait cooperatively in greenlets (see the module's note). Connecting waits
    as long as a command's answer (the socket timeout) unless ``socket_connect_timeout``
    (an option, or in the URL) says otherwise.

    Raises:
        ValueError: the URL's scheme is not redis, rediss or unix, or it is malformed, or
            a timeout in it is not a positive, finite number of seconds (the message
            names the URL and what is wrong).
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _CONNECTIONS:
        raise ValueError(f"Redis URL {url!r}: the scheme must be redis://, rediss:// or unix://")
    options.setdefault("health_check_interval", 30)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT)
    options.setdefault("max_connections", MAX_CONNECTIONS)
    if scheme != "unix":  # keep-alive is a TCP option
        options.setdefault("socket_keepalive", True)
    options["decode_responses"] = False
    options["connection_class"] = _CONNECTIONS[scheme]
    try:
        pool = WaitingConnectionPool.from_url(url, **options)
    except ValueError as exc:
        raise ValueError(f"Redis URL {url!r}: {exc}") from None
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    settings = client.connection_pool.connection_kwargs
    settings.setdefault("socket_connect_timeout", settings.get("socket_timeout"))
    for name in ("socket_timeout", "socket_connect_timeout"):
        seconds = settings.get(name)
        if not (isinstance(seconds, int | float) and 0 < seconds < math.inf):
            client.close()
            raise ValueError(
                f"Redis URL {url!r}: {name} {seconds!r} is not a positive, finite number of seconds"
            )
    return client

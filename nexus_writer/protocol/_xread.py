"""XREAD that waits cooperatively in a gevent hub and natively in a plain thread.

.. important::
   Call from any greenlet (not the hub greenlet) or any thread. In a thread with a gevent
   hub the wait for Redis's answer yields to that hub, without monkey-patching: redis-py's
   own sockets would block the whole hub for up to the BLOCK time.
"""

from __future__ import annotations

import socket
from typing import Any, cast

import gevent.socket
import redis

from nexus_writer.green import in_greenlet

#: Seconds to wait beyond the BLOCK time before the server counts as unresponsive.
GRACE = 5.0

#: Each entry as (id, [field, value, field, value, ...]), as Redis sends it.
Entries = list[tuple[bytes, list[bytes]]]


def fields_of(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's flat field list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def check_client(client: redis.Redis) -> None:
    """Raises ValueError for a client that decodes responses: payloads are bytes."""
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError("the Redis client must be made with decode_responses=False")


def xread(
    client: redis.Redis,
    streams: dict[str, str],
    count: int,
    block: float | None,
    group: tuple[str, str] | None = None,
) -> dict[str, Entries]:
    """Entries after the given ids of each stream, waiting at most ``block`` seconds
    (None: do not wait) for the first one. Returns {stream: [(id, fields), ...]}.

    With ``group`` (group, consumer): XREADGROUP, where the id ``>`` means new entries and
    another id the consumer's pending entries after it. A pending entry that was trimmed
    from the stream since comes with None for its fields.

    Raises:
        redis.ConnectionError, redis.TimeoutError: the server went away or stopped answering.
        redis.ResponseError: the group does not exist.
    """
    args: list[Any] = ["XREADGROUP", "GROUP", *group] if group else ["XREAD"]
    args += ["COUNT", count]
    if block is not None:
        args += ["BLOCK", max(1, int(block * 1000))]
    args += ["STREAMS", *streams.keys(), *streams.values()]
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command(*args)  # type: ignore[no-untyped-call]
        if block:
            # Wait for the answer beyond the client's socket timeout (the BLOCK time, and
            # some grace), then read it.
            if in_greenlet():
                try:
                    # send_command connected it; redis-py has no public accessor for it
                    sock = cast(socket.socket, connection._sock)
                    gevent.socket.wait_read(sock.fileno(), timeout=block + GRACE)
                except TimeoutError:
                    answered = False
                else:
                    answered = True
            else:
                answered = connection.can_read(timeout=block + GRACE)
            if not answered:
                raise redis.TimeoutError(f"Redis did not answer XREAD within {block + GRACE} s")
        response = connection.read_response()
    except BaseException:
        # An answer may still be on its way: this connection can no longer be trusted.
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)
    return _parse(response)


def _parse(response: Any) -> dict[str, Entries]:
    if not response:
        return {}
    items = response.items() if isinstance(response, dict) else response  # RESP3 or RESP2
    result: dict[str, Entries] = {}
    for stream, entries in items:
        name = stream.decode() if isinstance(stream, bytes) else stream
        if entries and isinstance(entries[0][1], dict):  # RESP3 clients get maps
            result[name] = [(i, [x for pair in f.items() for x in pair]) for i, f in entries]
        else:
            result[name] = entries
    return result

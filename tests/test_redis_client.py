"""connect(): in a greenlet a command waits for Redis cooperatively, a Redis that stops
answering is a redis.TimeoutError after the socket timeout, and a blocking XREAD waits its
BLOCK time beyond that timeout, in a greenlet or a plain thread."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import gevent
import pytest
import redis

from nexus_writer.protocol._xread import xread
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis


@contextlib.contextmanager
def frozen(server: EmbeddedRedis) -> Iterator[None]:
    """Redis stopped (SIGSTOP): connections stay open, nothing answers."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@contextlib.contextmanager
def hub_watched() -> Iterator[list[float]]:
    """The times at which a greenlet of the hub ran, every 20 ms, during the block: a
    long gap says the hub was blocked."""
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.02)

    ticker = gevent.spawn(tick)
    try:
        yield ticks
    finally:
        ticker.kill()


def longest_gap(ticks: list[float], began: float, ended: float) -> float:
    during = [t for t in ticks if began <= t <= ended]
    assert len(during) > 10
    return max(b - a for a, b in itertools.pairwise(during))


def test_a_frozen_redis_keeps_the_hub_running_and_times_out(redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url, socket_timeout=1.0)
    client.ping()
    with hub_watched() as ticks, frozen(redis_server):
        began = time.monotonic()
        with pytest.raises(redis.TimeoutError, match=r"did not answer within 1\.0 s"):
            gevent.spawn(client.get, "anything").get(timeout=10)
        ended = time.monotonic()
    assert 0.9 < ended - began < 5
    assert longest_gap(ticks, began, ended) < 0.5
    assert client.ping()  # a fresh connection: the spoilt one was dropped
    client.close()


def test_a_frozen_redis_times_out_in_a_plain_thread(redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url, socket_timeout=0.5)
    client.ping()
    outcome: list[BaseException] = []

    def get() -> None:
        try:
            client.get("anything")
        except BaseException as exc:
            outcome.append(exc)

    with frozen(redis_server):
        worker = threading.Thread(target=get)
        worker.start()
        worker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], redis.TimeoutError)
    client.close()


@pytest.mark.parametrize("where", ["greenlet", "thread"])
def test_a_blocking_read_waits_its_block_time_beyond_the_socket_timeout(
    redis_client: redis.Redis, redis_server: EmbeddedRedis, where: str
) -> None:
    client = connect(redis_server.url, socket_timeout=0.2)
    result: list[object] = []

    def read() -> None:
        began = time.monotonic()
        result.append(xread(client, {"nothing-comes": "$"}, 1, 0.6))
        result.append(time.monotonic() - began)

    if where == "greenlet":
        gevent.spawn(read).get(timeout=10)
    else:
        worker = threading.Thread(target=read)
        worker.start()
        worker.join(10)
    assert result[0] == {}
    assert 0.55 < result[1] < 3  # type: ignore[operator]
    client.close()


def test_a_greenlet_killed_while_waiting_leaves_no_answer_for_the_next(
    redis_server: EmbeddedRedis,
) -> None:
    """The answer to a command whose greenlet was killed while it waited must not be
    read as the answer to the next command on that connection."""
    client = connect(redis_server.url, max_connections=1)
    client.ping()
    with frozen(redis_server):
        waiting = gevent.spawn(client.echo, "first")
        gevent.sleep(0)  # it runs until it waits for the answer
        waiting.kill()
    assert client.echo("second") == b"second"
    client.close()


@contextlib.contextmanager
def not_accepting() -> Iterator[int]:
    """A port whose listener never accepts and whose queue of waiting connections is full:
    a new connection hangs, as with a network that drops packets. The port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        while True:  # until one connection is not taken into the queue any more
            filler = socket.create_connection(("127.0.0.1", port), timeout=10)
            fillers.append(filler)
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # full
            finally:
                probe.close()
            fillers.append(probe)
        yield port
    finally:
        for each in fillers:
            each.close()
        listener.close()


def test_connecting_to_a_server_that_does_not_accept_keeps_the_hub_running() -> None:
    with not_accepting() as port:
        client = connect(f"redis://127.0.0.1:{port}/0?socket_timeout=0.5")
        with hub_watched() as ticks:
            began = time.monotonic()
            with pytest.raises(redis.TimeoutError, match="Timeout connecting"):
                gevent.spawn(client.ping).get(timeout=30)
            ended = time.monotonic()
    assert 0.4 < ended - began < 5  # the URL's socket timeout, not 10 s
    assert longest_gap(ticks, began, ended) < 0.3


@pytest.mark.parametrize(
    ("query", "what"),
    [
        ("socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("socket_timeout=-1", "socket_timeout -1.0 is not a positive, finite number"),
        ("socket_timeout=nan", "socket_timeout nan is not a positive, finite number"),
        ("socket_timeout=0", "socket_timeout 0.0 is not a positive, finite number"),
        ("socket_connect_timeout=inf", "socket_connect_timeout inf is not a positive"),
    ],
)
def test_a_bad_timeout_in_the_url_is_refused_naming_it(query: str, what: str) -> None:
    with pytest.raises(ValueError, match=re.escape(what)) as refused:
        connect(f"redis://127.0.0.1:1/0?{query}")
    assert f"Redis URL 'redis://127.0.0.1:1/0?{query}'" in str(refused.value)


def test_with_every_connection_in_use_a_command_waits_for_one(
    redis_server: EmbeddedRedis,
) -> None:
    """redis-py's pool failed at once with "Too many connections"; ours waits for a
    connection to be released (yielding to the hub), up to the socket timeout."""
    client = connect(f"{redis_server.url}?socket_timeout=0.5", max_connections=1)
    held = client.connection_pool.get_connection()
    waiting = gevent.spawn(client.ping)
    with hub_watched() as runs:
        gevent.sleep(0.1)  # the window in which the ping must wait, and the hub run
    assert not waiting.ready()
    assert len(runs) >= 3  # the hub ran meanwhile (a tick every 20 ms)
    client.connection_pool.release(held)
    assert waiting.get(timeout=5) is True
    held = client.connection_pool.get_connection()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.MaxConnectionsError):
        client.ping()  # never released: refused after the socket timeout
    assert 0.4 < time.monotonic() - started < 3
    client.connection_pool.release(held)
    client.close()

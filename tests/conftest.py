"""Shared fixtures: hub threads that are always stopped, plain threads, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import gevent
import pytest
import redis
from gevent._hub_local import get_hub_if_exists

from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from sync_primitives import Thread

T = TypeVar("T")

#: The type of the hub_threads fixture.
HubThreads = Callable[..., Thread]

#: Generous bound for anything that should happen "at once" on a loaded 2-core machine.
PROMPT = 5.0
#: The source tree: on the path of the Python programs that tests run (run_python).
ROOT = Path(__file__).resolve().parents[1]


def run_python(
    program: str, timeout: float, *, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a Python process of its own (this interpreter, our sources on its
    path, this environment and ``env``), to its end; its status and output as text."""
    return subprocess.run(
        [sys.executable, "-c", program],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts: reap what you wait for)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def in_plain_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run ``fn(*args)`` in a new OS thread that has no gevent hub."""
    future: Future[T] = Future()

    def body() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=body, daemon=True).start()
    return future


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = PROMPT, interval: float = 0.001
) -> None:
    """Poll ``condition`` until it holds, yielding to the main hub; fail after ``timeout``.

    For states that have no event of their own, such as "three greenlets are now blocked
    in wait()", read from a primitive's statistics(), or what another process leaves in a
    file or in Redis (``interval``: seconds between looks, for conditions that cost a
    round trip).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        gevent.sleep(interval)


def call_in_hub(fn: Callable[[], T]) -> T | BaseException:
    """Run ``fn`` as a callback in the main hub greenlet; its result, or what it raised."""
    outcome: list[T | BaseException] = []

    def callback() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    gevent.get_hub().loop.run_callback(callback)
    wait_until(lambda: bool(outcome), "the hub callback ran")
    return outcome[0]


def yield_now() -> None:
    """Let others run: the hub's other greenlets if this thread has a hub, else other threads.

    Used inside critical sections, so that a broken lock would show lost updates. Unlike
    ``gevent.sleep(0)`` it does not give a hub-less thread a hub.
    """
    if get_hub_if_exists() is None:
        time.sleep(0)  # drops the GIL: a switch point, not a wait
    else:
        gevent.sleep(0)


@pytest.fixture
def hub_threads() -> Iterator[Callable[..., Thread]]:
    """A factory of started :class:`Thread` objects, all stopped at teardown."""
    started: list[Thread] = []

    def factory(**kwargs: Any) -> Thread:
        thread = Thread(**kwargs)
        thread.start(timeout=PROMPT)
        started.append(thread)
        return thread

    yield factory
    for thread in started:
        thread.stop(timeout=PROMPT)


@pytest.fixture(scope="session")
def redis_server(nexus_redis: EmbeddedRedis) -> EmbeddedRedis:
    """One real redis-server on loopback for the whole test session: the testing kit's
    (nexus_writer.testing.plugin), which its own tests share."""
    return nexus_redis


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the session's server, emptied before each test."""
    client = connect(redis_server.url)
    client.flushall()
    yield client
    client.close()

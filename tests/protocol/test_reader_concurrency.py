"""Readers block cooperatively in a gevent hub (without monkey-patching) and natively in a
plain thread; time-outs are honoured in both."""

from __future__ import annotations

import time

import gevent
import redis

from nexus_writer.protocol import PointsEvent, ScanReader, SessionPublisher, SessionReader
from sync_primitives import Thread
from tests.conftest import PROMPT, in_plain_thread, yield_now


def test_blocking_read_in_a_greenlet_lets_the_hub_run(redis_client: redis.Redis) -> None:
    reader = SessionReader(redis_client, "coop")
    ticks: list[int] = []

    def tick() -> None:
        for i in range(30):
            ticks.append(i)
            yield_now()

    started = time.monotonic()
    waiting = gevent.spawn(reader.read, 0.5)
    ticker = gevent.spawn(tick)
    ticker.join(timeout=PROMPT)
    assert ticks == list(range(30)) and not waiting.ready()  # the hub ran while it waited
    assert waiting.get(timeout=PROMPT) == []
    assert 0.45 <= time.monotonic() - started < 0.5 + 2.0


def test_read_in_a_greenlet_wakes_on_publication_from_another_thread(
    redis_client: redis.Redis,
) -> None:
    scan = SessionPublisher(redis_client, "coop").new_scan(
        name="ct", title="ct", file="/x.h5", channels=[{"name": "c", "dtype": "<f8"}]
    )
    reader = ScanReader(redis_client, scan.key)
    reader.read(timeout=None)  # the CREATED event
    worker = Thread(name="reader-hub")
    worker.start()
    try:
        pending = worker.apply_async(reader.read, PROMPT)
        started = time.monotonic()
        in_plain_thread(scan.send, "c", [1.5]).result(PROMPT)
        events = pending.get(PROMPT)
    finally:
        worker.stop(timeout=PROMPT)
    assert [e.data.tolist() for e in events if isinstance(e, PointsEvent)] == [[1.5]]  # type: ignore[union-attr]
    assert time.monotonic() - started < 2.0


def test_read_in_a_plain_thread_blocks_natively_and_honours_its_timeout(
    redis_client: redis.Redis,
) -> None:
    reader = SessionReader(redis_client, "plain")

    def timed_read() -> float:
        started = time.monotonic()
        assert reader.read(timeout=0.3) == []
        return time.monotonic() - started

    assert 0.28 <= in_plain_thread(timed_read).result(PROMPT) < 0.3 + 2.0

"""WriterService in this process: its statistics say what went wrong, and it goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gevent
import h5py
import pytest
import redis

from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.service import Role, WriterService, all_acknowledged
from nexus_writer.session_writer import ScanEvent
from nexus_writer.simulator import Beamline
from tests.conftest import wait_until
from tests.writer.helpers import assert_file_has_every_value


def test_errors_on_the_session_stream_are_counted_and_waited_out(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    service = WriterService(redis_client, "stats", WriterOptions(roots=(tmp_path,)), lease_ttl=0.5)
    running = gevent.spawn(service.run)
    try:
        wait_until(lambda: service.writer() is not None, "the service active")
        assert service.role is Role.ACTIVE
        writer = service.writer()
        assert writer is not None
        wait_until(writer.following.is_set, "the session followed")
        stream = "nxw:session:stats:scans"
        redis_client.delete(stream)
        redis_client.set(stream, "not a stream")
        wait_until(lambda: service.statistics().errors > 0, "the error counted", 10)
        assert "WRONGTYPE" in (service.statistics().last_error or "")
        redis_client.delete(stream)
        line = Beamline(SessionPublisher(redis_client, "stats"), root=str(tmp_path), record=True)
        scan = line.run("loopscan 3 0")
        wait_until(
            lambda: (
                (w := service.writer()) is not None and w.session_statistics().scans_succeeded == 1
            ),
            "the scan written after the stream was mended",
            15,
        )
        stats = service.statistics()
        assert stats.role == "active" and stats.lease.held and stats.writer is not None
    finally:
        service.stop()
        running.join(30)
    assert running.value == 0
    assert service.statistics().role == "stopped"
    assert_file_has_every_value(scan)


def test_a_scan_announced_again_is_written_once_and_each_announcement_acknowledged(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A publisher that announces a scan twice (while it is written, and after): one
    entry, and no announcement left pending for the next service."""
    events: list[ScanEvent] = []
    service = WriterService(
        redis_client, "again", WriterOptions(roots=(tmp_path,)), on_scan=events.append
    )
    running = gevent.spawn(service.run)

    def ended() -> list[ScanEvent]:
        return [e for e in events if e.kind == "ended"]

    try:
        wait_until(
            lambda: (w := service.writer()) is not None and w.following.is_set(), "following"
        )
        scan = SessionPublisher(redis_client, "again").new_scan(
            name="ct", title="ct", file=str(tmp_path / "again.h5"), channels=[]
        )
        again: dict[Any, Any] = {"key": scan.key, "name": "ct", "number": 1}
        wait_until(lambda: bool(events), "the scan started")
        redis_client.xadd("nxw:session:again:scans", again)  # while it is written
        scan.prepare()
        scan.start()
        scan.close()
        wait_until(lambda: len(ended()) == 1, "the scan written")
        redis_client.xadd("nxw:session:again:scans", again)  # after its end
        wait_until(lambda: len(ended()) == 2, "the scan seen again")
        wait_until(lambda: all_acknowledged(redis_client, "again"), "all acknowledged")
    finally:
        service.stop()
        running.join(30)
    first, second = ended()
    assert (first.state, first.reason) == ("OFF", None)
    assert (second.state, second.reason) == ("OFF", "written before: nothing to do")
    assert second.url == first.url is not None
    with h5py.File(tmp_path / "again.h5", "r") as handle:
        assert list(handle) == ["scan_0001"]


def test_a_client_of_too_few_connections_is_refused_saying_so(redis_server: EmbeddedRedis) -> None:
    """Found by a hostile test: with a pool of 1 connection every scan waited for a
    connection, was logged as "Redis unreachable", and ended STOPPED with nothing."""
    client = connect(redis_server.url, max_connections=2)
    with pytest.raises(ValueError, match="needs 3 at least"):
        WriterService(client, "few")
    client.close()

"""The stream mux: a session's open scans share one blocking read (issue 12).

One test per scenario: an idle open scan makes no Redis calls, a stop wakes it at once,
many scans do not need a connection each, and a scan that starts while the shared read
waits is read at once (the doorbell).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import h5py
import numpy as np
import pytest
import redis

from nexus_writer.nexus.master import entry_of_scan
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import (
    ChannelEndEvent,
    PointsEvent,
    ScanPublisher,
    ScanReader,
    ScanState,
    SessionPublisher,
    StateEvent,
)
from nexus_writer.protocol._xread import xread
from nexus_writer.protocol.mux import Feed, StreamMux
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.session_writer import NexusSessionWriter
from nexus_writer.subscriber import Mode, State
from sync_primitives import Event
from tests.conftest import PROMPT, in_plain_thread, wait_until
from tests.writer.helpers import started_scan, text

CHANNELS = [{"name": "simu:diode", "dtype": "<f8"}, {"name": "axis:m", "dtype": "<f8"}]


def scan_with_points(session: SessionPublisher, path: Path) -> ScanPublisher:
    """A started scan of CHANNELS in ``path`` whose first channel has 3 points."""
    scan = started_scan(session, name="ct", title=path.stem, file=str(path), channels=CHANNELS)
    scan.send("simu:diode", np.arange(3.0))
    return scan


def xread_calls(client: redis.Redis) -> int:
    """XREAD commands Redis has run (blocked ones count once they return)."""
    stats = client.info("commandstats").get("cmdstat_xread", {})
    return int(stats.get("calls", 0))


def test_an_idle_open_scan_makes_no_redis_calls(redis_client: redis.Redis, tmp_path: Path) -> None:
    """Before: the listener asked Redis four times a second whether anything had come."""
    scan = scan_with_points(SessionPublisher(redis_client, "idle"), tmp_path / "idle.h5")
    writer = NexusScanWriter(redis_client, scan.key, WriterOptions(), mode=Mode.PARALLEL)
    writer.start()
    wait_until(lambda: writer.progress()[0] == 3, "the first points are written")
    calls = xread_calls(redis_client)
    gevent.sleep(1.0)  # the window measured: a second of an idle open scan
    assert xread_calls(redis_client) == calls
    started = time.monotonic()
    writer.stop(wait=True, timeout=PROMPT)
    assert time.monotonic() - started < 1.0  # the stop woke it; no poll period to wait out
    assert writer.state is State.OFF


def test_many_scans_share_a_connection_pool_of_eight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: each open scan's listener held a pooled connection in its blocking read;
    with redis-py's default pool of 100, the 101st scan met "Too many connections" (and
    waited, retrying). Here 30 open scans and a pool of 8 connections."""
    caplog.set_level(logging.WARNING)
    with EmbeddedRedis() as server:
        client = connect(server.url, max_connections=8)
        writer = NexusSessionWriter(client, "many", WriterOptions(roots=(tmp_path,)))
        writer.start()
        assert writer.following.wait(PROMPT)
        session = SessionPublisher(connect(server.url), "many")
        scans = [
            started_scan(
                session,
                name="ct",
                title=f"scan {i}",
                file=str(tmp_path / f"many_{i}.h5"),
                channels=CHANNELS,
            )
            for i in range(30)
        ]
        wait_until(lambda: len(writer.scans()) == 30, "every scan has a writer", PROMPT * 3)
        for scan in scans:
            scan.send("simu:diode", np.arange(5.0))
            scan.send("axis:m", np.arange(5.0))
        for scan in scans:
            scan.close()
        assert writer.wait_for_scans([s.key for s in scans], timeout=PROMPT * 6)
        stats = writer.session_statistics()
        writer.stop(wait=True, timeout=PROMPT * 3)
        assert stats.scans_succeeded == 30 and stats.scans_failed == 0
    # (other tests' writers may log too: only this message is this test's business)
    assert not [r.getMessage() for r in caplog.records if "Too many" in r.getMessage()]


def test_a_scan_that_starts_while_the_shared_read_waits_is_read_at_once(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The shared read waits up to 30 s; a new scan rings its doorbell so that the next
    read names the new scan's streams."""
    writer = NexusSessionWriter(redis_client, "bell", WriterOptions(roots=(tmp_path,)))
    writer.start()
    assert writer.following.wait(PROMPT)
    session = SessionPublisher(redis_client, "bell")
    first = started_scan(
        session, name="ct", title="first", file=str(tmp_path / "a.h5"), channels=CHANNELS
    )
    wait_until(lambda: len(writer.scans()) == 1, "the first scan has a writer")
    mux = writer._mux
    assert mux is not None
    wait_until(lambda: mux._waiting, "the shared read waits")
    second = started_scan(
        session, name="ct", title="second", file=str(tmp_path / "b.h5"), channels=CHANNELS
    )
    wait_until(lambda: len(writer.scans()) == 2, "the second scan has a writer")
    second.send("simu:diode", np.arange(4.0))
    late = next(w for w in writer.scans() if w.key == second.key)
    wait_until(lambda: late.progress()[0] == 4, "the second scan's points are written", 5.0)
    for scan in (first, second):
        scan.close()
    assert writer.wait_for_scans([first.key, second.key], timeout=PROMPT * 3)
    writer.stop(wait=True, timeout=PROMPT * 3)
    assert not redis_client.keys("nxw:mux:*")  # the doorbell is removed


def test_entries_taken_while_redis_refuses_the_documents_read_are_not_lost(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Seen in the device tests: a scan's CLOSED was taken while its document could not
    be read again (the pool had no connection to give); the taking raised half-way, the
    entries handed over were lost, and the scan waited for an end already read. Here the
    reader's client has one connection, held elsewhere while it takes the entries."""
    scan = scan_with_points(SessionPublisher(redis_client, "held"), tmp_path / "held.h5")
    client = connect(f"{redis_server.url}?socket_timeout=0.2", max_connections=1)
    reader = ScanReader(client, scan.key)
    scan.send("axis:m", np.arange(3.0))
    scan.close()
    response = xread(redis_client, dict.fromkeys(reader.wanted(), "0-0"), 100, None)
    held = client.connection_pool.get_connection()
    try:
        events = reader.take(response)  # the document's read after CLOSED fails
        with pytest.raises(redis.ConnectionError):
            reader.refresh()
    finally:
        client.connection_pool.release(held)
    states = [e.state for e in events if isinstance(e, StateEvent)]
    assert states[-1] is ScanState.CLOSED
    ends = {e.channel.name: e.total for e in events if isinstance(e, ChannelEndEvent)}
    assert ends == {"simu:diode": 3, "axis:m": 3}
    stale = reader.document
    assert stale.end_time is None and not reader.done  # the document is read again first
    assert reader.refresh() == []
    assert reader.document is not stale and reader.document.end_time is not None
    assert reader.done


def drain(feed: Feed, wake: Event) -> list[object]:
    """What the feed gets until its reader has read the CLOSED."""
    events: list[object] = []
    while feed.reader.state is not ScanState.CLOSED:
        assert wake.wait(PROMPT), "the mux woke the reader"
        wake.clear()
        events += feed.take()
    return events


def test_two_readers_of_one_scan_both_get_every_entry(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A scan announced again gets a second reader while the first one is ahead; each
    stream was read for one of them only, and the other waited for good."""
    scan = scan_with_points(SessionPublisher(redis_client, "twice"), tmp_path / "twice.h5")
    mux = StreamMux(redis_client)
    try:
        ahead, behind = ScanReader(redis_client, scan.key), ScanReader(redis_client, scan.key)
        woken = Event(), Event()
        first = mux.follow(ahead, woken[0])
        assert woken[0].wait(PROMPT)
        early = first.take()
        second = mux.follow(behind, woken[1])
        scan.send("simu:diode", np.arange(3.0, 5.0))
        scan.close()
        got = [early + drain(first, woken[0]), drain(second, woken[1])]
    finally:
        mux.close()
    for events in got:
        points = [e.data for e in events if isinstance(e, PointsEvent)]
        np.testing.assert_array_equal(np.concatenate(points), np.arange(5.0))


def test_a_consumer_that_fails_wakes_its_waiting_listener(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Seen in make test: the consumer failed (a path outside the roots) and asked the
    listener to stop without waking it; the listener of the open scan waited for the
    inactivity time-out (600 s) and the scan never ended."""
    scan = scan_with_points(SessionPublisher(redis_client, "refused"), Path("/proc/no.h5"))
    writer = NexusScanWriter(
        redis_client, scan.key, WriterOptions(roots=(tmp_path,)), mode=Mode.PARALLEL
    )
    writer.start()
    assert writer.join(PROMPT)  # the scan stays open: only the consumer's failure ends it
    assert writer.state is State.FAULT
    assert "outside the writer's root directories" in (writer.statistics().reason or "")


#: A Lua script that keeps Redis busy for about a second (BUSY to everyone else).
BUSY_SECOND = """
local t0 = redis.call('TIME')
while true do
  local t = redis.call('TIME')
  if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1000000 then break end
end
return 1
"""


def test_a_busy_redis_is_waited_out_and_the_scan_goes_on(
    redis_client: redis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Found by a hostile test: a BUSY answer (a long script) was taken for a refusal for
    good; the shared read died, every open scan failed with its data published, and
    every scan after it failed at once. Here the mux gathers for 0.5 s after a read that
    brought points, so that its next read is made while the script that
    starts just after those points runs (Redis answers BUSY to it after lua-time-limit)."""
    redis_client.config_set("lua-time-limit", 100)
    session = SessionPublisher(redis_client, "busy")
    scan = scan_with_points(session, tmp_path / "busy.h5")
    mux = StreamMux(redis_client, "nxw", gather=0.5, gather_per_stream=1.0)
    writer = NexusScanWriter(redis_client, scan.key, WriterOptions(), mode=Mode.PARALLEL, mux=mux)
    try:
        writer.start()
        wait_until(lambda: writer.progress()[0] == 3, "the first points are written")
        script = connect(redis_server.url, socket_timeout=30)

        def points_then_busy() -> None:
            scan.send("simu:diode", np.arange(3.0, 6.0))  # the mux reads them, then gathers
            script.eval(BUSY_SECOND, 0)

        busy = in_plain_thread(points_then_busy)
        wait_until(busy.done, "the script ran", PROMPT, 0.01)  # the hub runs meanwhile
        busy.result()
        scan.send("axis:m", np.arange(6.0))
        scan.close()
        assert writer.join(PROMPT * 2)
    finally:
        mux.close()
    assert writer.state is State.OFF, writer.statistics().reason
    assert writer.progress()[0] == 6
    assert mux.error is None and mux.outage > 0  # it was waited out


def _user_url(server: EmbeddedRedis, admin: redis.Redis, *rules: str) -> str:
    """A Redis user with these ACL rules, and the URL that logs in as it."""
    rules = ("on", ">secret", *rules)
    admin.execute_command("ACL", "SETUSER", "writer", *rules)  # type: ignore[no-untyped-call]
    return server.url.replace("redis://", "redis://writer:secret@")


def test_an_acl_that_refuses_the_doorbell_leaves_the_scans_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The doorbell is a key of the writer's own: an ACL written for the protocol's keys
    alone refuses it. The mux goes on without it (a new scan waits for the next read)."""
    caplog.set_level(logging.ERROR)
    with EmbeddedRedis() as server:
        admin = connect(server.url)
        url = _user_url(server, admin, "~nxw:protocol", "~nxw:session:*", "~nxw:scan:*", "+@all")
        writer = NexusSessionWriter(connect(url), "acl", WriterOptions(roots=(tmp_path,)))
        writer.start()
        try:
            assert writer.following.wait(PROMPT)
            session = SessionPublisher(admin, "acl")
            first = scan_with_points(session, tmp_path / "first.h5")
            wait_until(lambda: len(writer.scans()) == 1, "the first scan has a writer")
            mux = writer._mux
            assert mux is not None
            wait_until(
                lambda: mux._waiting and mux._doorbell is None,
                "the shared read waits, without its doorbell",
            )
            second = scan_with_points(session, tmp_path / "second.h5")  # can't ring
            wait_until(lambda: len(mux._feeds) == 2, "the second scan follows the mux")
            for scan in (first, second):
                scan.send("axis:m", np.arange(3.0))  # the first's ends the read under way
                scan.close()
            assert writer.wait_for_scans([first.key, second.key], timeout=PROMPT * 3)
            stats = writer.session_statistics()
            assert (stats.scans_succeeded, stats.scans_failed) == (2, 0)
        finally:
            writer.stop(wait=True, timeout=PROMPT * 3)
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "refuses to read the doorbell" in m and "NOPERM" in m]


def test_a_read_refused_for_good_leaves_the_scan_to_be_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that refuses the scan's channel streams (not its document nor its events):
    the shared read ends, the open scan ends unfinished (not acknowledged, not lost), and
    a service allowed to read them writes it whole. The doorbell, allowed, is not blamed;
    a scan that starts once the ACL is mended is written by the same service (before,
    the failed mux refused every later scan of the session)."""
    caplog.set_level(logging.ERROR)
    with EmbeddedRedis() as server:
        admin = connect(server.url)
        # The documents (nxw:scan:refused:<number>-<8 hex digits>) and the events streams.
        keys = ["nxw:protocol", "nxw:session:*", "nxw:mux:*", "nxw:scan:refused:?-????????"]
        keys.append("nxw:scan:refused:*:events")
        url = _user_url(server, admin, *(f"~{k}" for k in keys), "+@all")
        options = WriterOptions(roots=(tmp_path,))
        refused = NexusSessionWriter(connect(url), "refused", options, group="nexus-writer")
        refused.start()
        session = SessionPublisher(admin, "refused")
        try:
            assert refused.following.wait(PROMPT)
            scan = scan_with_points(session, tmp_path / "refused.h5")
            scan.send("axis:m", np.arange(3.0))
            scan.close()
            assert refused.wait_for_scans([scan.key], timeout=PROMPT * 3)
            stats = refused.session_statistics()
            assert (stats.scans_succeeded, stats.scans_failed) == (0, 1)
            assert "no permissions" in str(stats.recent[-1].reason)
            admin.execute_command("ACL", "SETUSER", "writer", "~*")  # type: ignore[no-untyped-call]
            later = scan_with_points(session, tmp_path / "later.h5")
            later.send("axis:m", np.arange(3.0))
            later.close()
            assert refused.wait_for_scans([later.key], timeout=PROMPT * 3)
            assert refused.session_statistics().scans_succeeded == 1
        finally:
            refused.stop(wait=True, timeout=PROMPT * 3)
        assert not [r for r in caplog.records if "doorbell" in r.getMessage()]
        with h5py.File(scan.document.file, "r", locking=False) as handle:
            entry = handle[entry_of_scan(handle, scan.key, scan.document.number)]
            assert text(entry["writer/status"]) == "STOPPED"
            assert b"no permissions" in b" ".join(entry["writer/messages"][()])
        allowed = NexusSessionWriter(admin, "refused", options, group="nexus-writer")
        allowed.start()
        try:
            assert allowed.wait_for_scans([scan.key], timeout=PROMPT * 3)
            assert allowed.session_statistics().scans_succeeded == 1
        finally:
            allowed.stop(wait=True, timeout=PROMPT * 3)
        with h5py.File(scan.document.file, "r", locking=False) as handle:
            entry = handle[entry_of_scan(handle, scan.key, scan.document.number)]
            assert text(entry["writer/status"]) == "SUCCEEDED"
            np.testing.assert_array_equal(entry["measurement/diode"][()], np.arange(3.0))


def test_a_small_scan_is_read_again_without_waiting(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The gather after a read follows the streams the read names: for a scan of a few
    channels it would be microseconds, which gevent's timers turn into a millisecond
    added to every batch; it is not made."""
    scan = scan_with_points(SessionPublisher(redis_client, "small"), tmp_path / "small.h5")
    writer = NexusScanWriter(redis_client, scan.key, WriterOptions(), mode=Mode.PARALLEL)
    writer.start()
    try:

        def written(points: int) -> Callable[[], bool]:
            return lambda: writer.progress()[0] == points

        for batch in range(1, 6):
            wait_until(written(3 * batch), f"{3 * batch} points are written")
            scan.send("simu:diode", np.arange(3.0 * batch, 3.0 * batch + 3))
        scan.close()
        assert writer.join(PROMPT)
    finally:
        writer.stop(wait=True, timeout=PROMPT)
    mux = writer._mux
    assert mux is not None and mux.reads >= 5 and mux.gathers == 0

"""The standalone service, as a user runs it: ``nexus-writer run``, stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.nexus.options import Compression
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors, PublishedScan
from nexus_writer.testing import RunningWriter
from tests.conftest import wait_until
from tests.writer.helpers import assert_file_has_every_value, started_scan, text

ROOT = Path(__file__).parents[2]


def lines_of(stream: object) -> queue.Queue[str]:
    """The lines a process writes, as they come (read by a thread of their own)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str], needle: str, timeout: float = 30.0) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line with {needle!r} within {timeout} s: {seen[-80:]}"
            ) from None
        seen.append(line)
        if needle in line:
            return line


def wait_for_lines(lines: queue.Queue[str], needles: list[str], timeout: float = 30.0) -> None:
    """Wait until a line with each of ``needles`` has come, in any order."""
    missing = set(needles)
    while missing:
        line = wait_for_line(lines, "", timeout)
        missing = {needle for needle in missing if needle not in line}


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """The text of ``path`` once it exists (another process writes it: no event to wait
    on, so it is looked for, within a bound)."""
    wait_until(path.exists, f"{path} appears", timeout, interval=0.01)
    return path.read_text()


def test_the_service_writes_scans_until_sigterm(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_writer.cli",
            "--log-level",
            "info",
            "run",
            "--redis",
            redis_server.url,
            "--session",
            "service",
            "--root",
            str(tmp_path),
            "--compression",
            "gzip",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        lines = lines_of(service.stderr)
        wait_for_line(lines, "session service: following from announcement")
        client = redis.Redis.from_url(redis_server.url)
        line = Beamline(
            SessionPublisher(client, "service"),
            root=str(tmp_path),
            detectors=Detectors(mca=True),
            record=True,
        )
        published = line.run("ascan robx 0 1 8 0")
        wait_for_line(lines, f"subscriber '{published.key}': OFF")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
        wait_for_line(lines, "subscriber 'session service': OFF")
    finally:
        if service.poll() is None:
            service.kill()
    assert_file_has_every_value(published)
    with h5py.File(published.document.file, "r") as handle:
        spectra = handle[entry_name(published.document.number)]["instrument/mca1/data"]
        assert spectra.compression == "gzip"  # readable without plugins


@pytest.mark.parametrize("compression", list(Compression), ids=[c.value for c in Compression])
def test_compression_applies_to_arrays_only(
    redis_server: EmbeddedRedis, tmp_path: Path, compression: Compression
) -> None:
    """Through the testing kit: the service in a thread of its own, the scan's end waited
    for on its own signal, the entry read back."""
    with RunningWriter(
        redis_server.url, f"comp-{compression.value}", [tmp_path], compression=compression
    ) as writer:
        published = writer.beamline(Detectors(mca=True)).run("loopscan 5 0")
        written = writer.wait_for_scan(published.key, timeout=30)
    assert (written.status, written.messages) == ("SUCCEEDED", [])
    np.testing.assert_array_equal(written.data["mca1"], published.values["mca1:spectrum"])
    assert_file_has_every_value(published)
    with h5py.File(published.document.file, "r") as handle:
        entry = handle[written.entry]
        spectra, diode = entry["instrument/mca1/data"], entry["instrument/diode1/data"]
        filters = spectra.id.get_create_plist()
        ids = {filters.get_filter(i)[0] for i in range(filters.get_nfilters())}
        expected = {
            Compression.BITSHUFFLE_LZ4: {hdf5plugin.Bitshuffle.filter_id},
            Compression.GZIP: {1, 2},  # deflate and shuffle
            Compression.NONE: set(),
        }[compression]
        assert ids == expected
        assert diode.compression is None and diode.id.get_create_plist().get_nfilters() == 0


@contextlib.contextmanager
def running(service: subprocess.Popen[str]) -> Iterator[queue.Queue[str]]:
    """The lines of a service process while the block runs; then SIGTERM, and it must
    exit with 0. Killed if the block fails."""
    try:
        yield lines_of(service.stderr)
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)


def _service(
    redis_url: str,
    tmp_path: Path,
    *extra: str,
    session: str = "ready",
    lease_ttl: float = 1.0,
    file_size_limit: int | None = None,
) -> subprocess.Popen[str]:
    """``nexus-writer run`` on ``session`` at its default log level, with extra options;
    with ``file_size_limit`` (bytes), every write past it fails with EFBIG (see LIMITED).

    The lease is short: a service started after one was killed takes over within a second
    or two, not the default five."""
    limited = ["-c", LIMITED, str(file_size_limit)] if file_size_limit is not None else []
    return subprocess.Popen(
        [
            sys.executable,
            *limited,
            "-m",
            "nexus_writer.cli",
            "run",
            "--redis",
            redis_url,
            "--session",
            session,
            "--root",
            str(tmp_path),
            "--lease-ttl",
            str(lease_ttl),
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_ready_file_says_when_every_later_scan_is_written(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    ready_file = tmp_path / "writer.ready"
    service = _service(redis_server.url, tmp_path, "--ready-file", str(ready_file))
    with running(service) as lines:
        # At the default log level, it says what it follows and from where.
        line = wait_for_line(lines, "session ready: following from announcement")
        ready = json.loads(wait_for_file(ready_file))
        assert ready["session"] == "ready" and ready["pid"] == service.pid
        assert ready["position"] in line
        # A scan announced the instant the file is there is written.
        published = Beamline(
            SessionPublisher(redis_client, "ready"), root=str(tmp_path), record=True
        ).run("loopscan 3 0")
        wait_for_line(lines, f"subscriber '{published.key}': OFF")
    assert_file_has_every_value(published)
    assert not ready_file.exists()  # removed at stop: it never outlives the service


def test_not_ready_while_redis_is_away_at_start(tmp_path: Path) -> None:
    ready_file = tmp_path / "writer.ready"
    with EmbeddedRedis() as server:
        url = server.url
        server.halt()  # nothing listens there now
        with running(_service(url, tmp_path, "--ready-file", str(ready_file))) as lines:
            wait_for_line(lines, "Redis unreachable")
            assert not ready_file.exists()
            server.resume()
            wait_for_line(lines, "session ready: following from announcement 0-0")
            assert json.loads(wait_for_file(ready_file))["position"] == "0-0"
    assert not ready_file.exists()


def test_scans_announced_while_the_service_was_down_are_written_when_it_is_back(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    ready_file = tmp_path / "writer.ready"

    def service_life(expect: str, scans: list[PublishedScan]) -> None:
        with running(
            _service(redis_server.url, tmp_path, "--ready-file", str(ready_file))
        ) as lines:
            followed = wait_for_line(lines, "session ready: following from announcement")
            assert expect in followed
            wait_for_lines(lines, [f"subscriber '{p.key}': OFF" for p in scans])

    service_life("created now", [])
    line = Beamline(SessionPublisher(redis_client, "ready"), root=str(tmp_path), record=True)
    missed = [line.run("loopscan 3 0"), line.run("ascan robx 0 1 4 0")]  # while it is down
    service_life("continued", missed)
    for published in missed:
        assert_file_has_every_value(published)


def test_sigkill_while_a_scan_is_written_costs_no_finished_scan(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Each scan has a file of its own; the session's file only links them and is open
    for a moment per scan: a crash can damage the running scan's file, no other."""
    line = Beamline(
        SessionPublisher(redis_client, "ready"),
        root=str(tmp_path),
        detectors=Detectors(mca=True),
        record=True,
    )
    service = _service(redis_server.url, tmp_path)
    try:
        lines = lines_of(service.stderr)
        wait_for_line(lines, "session ready: following from announcement")
        finished = line.run("ascan robx 0 1 20 0")
        wait_for_line(lines, f"subscriber '{finished.key}': OFF")
        running = line.publisher.new_scan(
            name="timescan",
            title="timescan 0.001",
            file=line.session_file,
            channels=[{"name": "fast", "dtype": "<f8"}],
        )
        running.prepare()
        running.start()
        wait_for_line(lines, f"scan {running.key}: writing scan_0002")
        for batch in range(50):  # the writer is busy with this scan's file when it dies
            running.send("fast", np.arange(batch * 100, (batch + 1) * 100, dtype="<f8"))
        service.send_signal(signal.SIGKILL)
        assert service.wait(30) == -signal.SIGKILL
    finally:
        if service.poll() is None:
            service.kill()
    assert_file_has_every_value(finished)  # through the session's file, which opens
    # The finished scan's entry, through the session's file: the running scan's entry
    # (linked, its file cut short by the kill) may be unreadable, as the docstring says.
    assert nxcheck_errors(finished.document.file, "/scan_0001") == 0


#: Runs argv[2:] with files of at most argv[1] bytes, and EFBIG (not SIGXFSZ) past that:
#: a quota-like limit that no free-space check foresees. (A signal ignored and a limit set
#: before exec() both hold in the new program.)
LIMITED = (
    "import os, resource, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def test_a_write_error_fails_its_scan_alone_and_the_service_stops_cleanly(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    service = _service(
        redis_server.url,
        tmp_path,
        "--compression",
        "none",
        session="limit",
        file_size_limit=300_000,
    )
    line = Beamline(
        SessionPublisher(redis_client, "limit"),
        root=str(tmp_path),
        detectors=Detectors(mca=True),
        record=True,
    )
    try:
        lines = lines_of(service.stderr)
        wait_for_line(lines, "session limit: following from announcement")
        small = line.run("loopscan 3 0")
        wait_for_line(lines, f"subscriber '{small.key}': OFF")
        too_big = line.run("ascan robx 0 1 200 0")  # ~3 MB of spectra: past the limit
        wait_for_line(lines, f"subscriber '{too_big.key}': FAULT")
        after = line.run("loopscan 4 0")  # the service goes on
        wait_for_line(lines, f"subscriber '{after.key}': OFF")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0  # no crash at stop either
    finally:
        if service.poll() is None:
            service.kill()
    for published in (small, after):
        assert_file_has_every_value(published)
    with h5py.File(small.document.file, "r") as handle:
        assert sorted(handle) == ["scan_0001", "scan_0002", "scan_0003"]
    # The scan is not lost: it stayed pending, and the service, back without the limit
    # (the disk mended), writes it whole.
    with running(_service(redis_server.url, tmp_path, session="limit")) as lines:
        wait_for_line(lines, f"subscriber '{too_big.key}': OFF")
    assert_file_has_every_value(too_big)
    assert [p.name for p in tmp_path.rglob("*.partial")] == ["scan_0002.h5.partial"]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_scan_cut_short_is_written_whole_after_a_restart(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path, stop: int
) -> None:
    """Killed, or stopped (which closes the entry as STOPPED): the scan stays pending in
    the service's consumer group and is written again, whole, when the service is back."""
    session = SessionPublisher(redis_client, "ready")
    master = tmp_path / "ready.h5"

    def start() -> tuple[subprocess.Popen[str], queue.Queue[str]]:
        service = _service(redis_server.url, tmp_path)
        lines = lines_of(service.stderr)
        wait_for_line(lines, "session ready: following from announcement")
        return service, lines

    service, lines = start()
    try:
        scan = started_scan(
            session,
            name="timescan",
            title="timescan",
            file=str(master),
            channels=[{"name": "fast", "dtype": "<f8"}],
        )
        scan.send("fast", np.arange(0, 400, dtype="<f8"))  # 40 %
        wait_for_line(lines, f"scan {scan.key}: writing scan_0001")
        service.send_signal(stop)
        service.wait(30)
        scan.send("fast", np.arange(400, 1000, dtype="<f8"))  # the rest, while it is down
        scan.close()
        service, lines = start()
        line = wait_for_line(lines, f"scan {scan.key}: writing scan_0001")
        assert "again from its start" in line
        wait_for_line(lines, f"subscriber '{scan.key}': OFF")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
    finally:
        if service.poll() is None:
            service.kill()
    with h5py.File(master, "r") as handle:
        assert sorted(handle) == ["scan_0001"]  # nothing twice
        entry = handle["scan_0001"]
        np.testing.assert_array_equal(entry["measurement/fast"][()], np.arange(1000.0))
        assert text(entry["writer/status"]) == "SUCCEEDED"
        assert "end_time" in entry
    assert nxcheck_errors(str(master)) == 0


@pytest.mark.parametrize(
    ("spoil", "complaint"),
    [
        (lambda c: c.hset("nxw:session:ready:writer", "a", "b"), "cannot take the writer lease"),
        (lambda c: c.set("nxw:session:ready:writer", "garbage"), "standby: the session is written"),
        (lambda c: c.set("nxw:session:ready:writer", "x y"), "standby: the session is written"),
        (lambda c: c.set("nxw:session:ready:writer:term", "x"), "cannot take the writer lease"),
        (lambda c: c.set("nxw:protocol", "2.0"), "the session writer failed (Unsupported"),
    ],
    ids=[
        "lease-of-another-type",
        "lease-not-ours",
        "lease-half-ours",
        "term-no-count",
        "protocol-2",
    ],
)
def test_a_spoilt_key_is_reported_and_the_service_writes_once_it_is_mended(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    tmp_path: Path,
    spoil: Callable[[redis.Redis], object],
    complaint: str,
) -> None:
    """Keys of the session made something else by hand: the service says so, stays up,
    and writes once they are mended."""
    spoil(redis_client)
    with running(_service(redis_server.url, tmp_path)) as lines:
        wait_for_line(lines, complaint)
        redis_client.delete("nxw:session:ready:writer", "nxw:session:ready:writer:term")
        redis_client.set("nxw:protocol", "1.0")
        wait_for_line(lines, "session ready: following from announcement")
        line = Beamline(SessionPublisher(redis_client, "ready"), root=str(tmp_path), record=True)
        scan = line.run("loopscan 3 0")
        wait_for_line(lines, f"subscriber '{scan.key}': OFF")
    assert_file_has_every_value(scan)


def test_a_scan_announced_once_a_standby_is_ready_is_written_though_nobody_followed_before(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The active service died before it made the session's group (it had the lease, for
    a moment): the standby's ready file still means that every later scan is written."""
    redis_client.set("nxw:session:ready:writer", "1 elsewhere 4242 f00d", px=1500)
    ready_file = tmp_path / "writer.ready"
    with running(_service(redis_server.url, tmp_path, "--ready-file", str(ready_file))) as lines:
        wait_for_line(lines, "standby: the session is written by pid 4242 on elsewhere")
        assert json.loads(wait_for_file(ready_file))["role"] == "standby"
        line = Beamline(SessionPublisher(redis_client, "ready"), root=str(tmp_path), record=True)
        scan = line.run("loopscan 3 0")
        wait_for_line(lines, "this service writes the session")
        wait_for_line(lines, f"subscriber '{scan.key}': OFF")
    assert_file_has_every_value(scan)


def test_the_session_stream_made_something_else_for_a_while_is_waited_out(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Issue 9, defect 3: the session's key briefly holds a string (WRONGTYPE): the
    service says so, stays up, and writes the scans announced once it is a stream again."""
    with running(_service(redis_server.url, tmp_path)) as lines:
        wait_for_line(lines, "session ready: following from announcement")
        stream = "nxw:session:ready:scans"
        redis_client.delete(stream)
        redis_client.set(stream, "not a stream")
        wait_for_line(lines, "WRONGTYPE")
        wait_for_line(lines, "the session writer failed")
        redis_client.delete(stream)
        line = Beamline(SessionPublisher(redis_client, "ready"), root=str(tmp_path), record=True)
        scan = line.run("loopscan 3 0")  # makes the stream again
        wait_for_line(lines, f"subscriber '{scan.key}': OFF")
    assert_file_has_every_value(scan)

"""Faults and bad input: each fails only its own scan, with a clear reason, and loses
nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.nexus.options import Compression, WriterOptions
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import Keys, SessionPublisher
from nexus_writer.protocol.keys import text as text_of
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.simulator import Beamline, Detectors
from nexus_writer.subscriber import Mode, State
from sync_primitives import Event
from tests.conftest import PROMPT, wait_until
from tests.writer.helpers import (
    assert_file_has_every_value,
    entry_of,
    started_scan,
    text,
    write_scan,
)


def beamline(
    client: redis.Redis, root: Path, session: str = "faults", **detectors: Any
) -> Beamline:
    return Beamline(
        SessionPublisher(client, session),
        root=str(root),
        detectors=Detectors(**detectors),
        record=True,
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of our own: a disk that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_existing_file_gets_a_new_entry_and_keeps_its_content(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    line = beamline(redis_client, tmp_path)
    os.makedirs(os.path.dirname(line.session_file))
    with h5py.File(line.session_file, "w") as handle:
        handle["precious"] = np.arange(5)
    published = line.run("loopscan 4 0")
    assert write_scan(redis_client, published.key).state is State.OFF
    with h5py.File(line.session_file, "r") as handle:
        np.testing.assert_array_equal(handle["precious"][()], np.arange(5))
        assert entry_name(published.document.number) in handle
    assert_file_has_every_value(published)


def test_entry_name_taken_by_another_scan_gets_a_new_name_and_is_not_touched(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    line = beamline(redis_client, tmp_path)
    os.makedirs(os.path.dirname(line.session_file))
    with h5py.File(line.session_file, "w") as handle:
        handle.create_group(entry_name(1)).attrs["mine"] = "do not touch"
        handle[entry_name(1, 2)] = np.arange(3)  # not even a group
    published = line.run("loopscan 4 0")
    writer = write_scan(redis_client, published.key)
    assert writer.state is State.OFF  # saved, with a warning: not a fault
    assert_file_has_every_value(published)
    with h5py.File(line.session_file, "r") as handle:
        assert dict(handle[entry_name(1)].attrs) == {"mine": "do not touch"}
        assert list(handle[entry_name(1)]) == []
        np.testing.assert_array_equal(handle[entry_name(1, 2)][()], np.arange(3))
        entry = handle[entry_name(1, 3)]
        assert text(entry["writer/scan_key"]) == published.key
        assert text(entry["writer/status"]) == "SUCCEEDED"
        (message,) = [m.decode() for m in entry["writer/messages"][()]]
        assert f"entry {entry_name(1)} of {line.session_file} already holds another scan" in message
        assert message.endswith(f"is written as {entry_name(1, 3)}")
    assert nxcheck_errors(line.session_file) == 0


@pytest.mark.parametrize("key_file", ["kept", "deleted"])
def test_a_finished_scan_seen_again_is_not_written_again(
    redis_client: redis.Redis, tmp_path: Path, key_file: str
) -> None:
    published = beamline(redis_client, tmp_path).run("loopscan 4 0")
    assert write_scan(redis_client, published.key).state is State.OFF
    scan_file = Path(published.document.file).parent / "faults_scans" / "scan_0001.h5"
    if key_file == "deleted":  # by hand: the scan file itself still says whose it is
        scan_file.with_suffix(".key").unlink()
    before = Path(published.document.file).read_bytes(), scan_file.read_bytes()
    again = write_scan(redis_client, published.key)
    assert again.state is State.OFF  # nothing to do is no failure
    assert (Path(published.document.file).read_bytes(), scan_file.read_bytes()) == before
    assert sorted(p.name for p in scan_file.parent.iterdir()) == [
        ".lock",
        "scan_0001.h5",
        "scan_0001.key",
    ]
    assert_file_has_every_value(published)


def test_a_scan_killed_after_its_end_came_in_is_unfinished_not_failed(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill_scan leaves a scan UNFINISHED, to be written again (docs/operations.md), also
    when the publisher's end was in already but the writer had not finished with it."""
    published = beamline(redis_client, tmp_path).run("loopscan 4 0")
    writer = NexusScanWriter(redis_client, published.key, WriterOptions(), mode=Mode.PARALLEL)
    end_in, go_on = Event(), Event()  # across the test's thread and the writer's
    consume = writer.consume

    def consume_then_hold(events: list[object]) -> None:
        consume(events)
        if writer._closed is not None and not end_in.is_set():  # the end is in
            end_in.set()
            assert go_on.wait(PROMPT)

    monkeypatch.setattr(writer, "consume", consume_then_hold)
    writer.start()
    assert end_in.wait(PROMPT * 6)
    writer.kill()
    go_on.set()
    assert writer.join(PROMPT * 6)
    assert writer.unfinished == "killed before its end was written"
    scan_file = Path(published.document.file).parent / "faults_scans" / "scan_0001.h5"
    with h5py.File(scan_file, "r", locking=False) as handle:
        (entry,) = handle.values()
        assert text(entry["writer/status"]) == "STOPPED"  # to be written again


def test_a_session_file_left_unreadable_by_a_crash_is_made_again(
    redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    line = beamline(redis_client, tmp_path)
    first = line.run("loopscan 3 0")
    assert write_scan(redis_client, first.key).state is State.OFF
    master = Path(first.document.file)
    master.write_bytes(master.read_bytes()[:96])  # a crash while it was being written
    second = line.run("loopscan 4 0")
    assert write_scan(redis_client, second.key).state is State.OFF
    assert "does not open" in caplog.text and "made again from the scan files" in caplog.text
    for published in (first, second):
        assert_file_has_every_value(published)  # both reached through the new file
    (aside,) = master.parent.glob(f"{master.name}.broken-*")
    assert aside.stat().st_size == 96  # kept, as the crash left it
    with h5py.File(master, "r") as handle:
        assert sorted(handle) == [entry_name(1), entry_name(2)]
        assert handle.attrs["default"] == entry_name(2)
    assert nxcheck_errors(str(master)) == 0


def test_a_session_run_twice_into_one_file_keeps_both_runs(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    runs = []
    for _ in range(2):
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()  # a new Redis, as a second `make demo` has: numbers start again
        line = beamline(client, tmp_path, image="file", frames_per_file=2)
        runs.append([line.run("loopscan 3 0"), line.run("ascan robx 0 1 4 0")])
        for published in runs[-1]:
            assert write_scan(client, published.key).state is State.OFF
        client.close()
    for published in [*runs[0], *runs[1]]:
        assert_file_has_every_value(published)  # frames too: run 2 overwrote no detector file
    with h5py.File(runs[0][0].document.file, "r") as handle:
        assert sorted(k for k in handle if k.startswith("scan_")) == [
            entry_name(1),
            entry_name(1, 2),
            entry_name(2),
            entry_name(2, 2),
        ]
        assert handle.attrs["default"] == entry_name(2, 2)  # the newest scan
    assert nxcheck_errors(runs[0][0].document.file) == 0


def test_file_outside_the_roots_fails_that_scan_only(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    options = WriterOptions(roots=(allowed,))
    outside = beamline(redis_client, elsewhere, session="out").run("loopscan 3 0")
    inside = beamline(redis_client, allowed, session="in").run("loopscan 3 0")
    failed = write_scan(redis_client, outside.key, options=options)
    assert failed.state is State.FAULT
    assert "outside the writer's root directories" in (failed.statistics().reason or "")
    assert not elsewhere.exists()
    assert write_scan(redis_client, inside.key, options=options).state is State.OFF
    assert_file_has_every_value(inside)


def test_unwritable_directory_fails_the_scan_with_the_reason(
    redis_client: redis.Redis, tmpfs: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    published = beamline(redis_client, tmpfs).run("loopscan 3 0")
    writer = write_scan(redis_client, published.key)
    assert writer.state is State.FAULT
    assert "is not writable" in (writer.statistics().reason or "")


def test_full_disk_faults_that_scan_while_another_goes_on(
    redis_client: redis.Redis, tmp_path: Path, tmpfs: Path
) -> None:
    line = Beamline(
        SessionPublisher(redis_client, "big"),
        root=str(tmpfs),
        detectors=Detectors(mca=True),
        batch=10,
        record=True,
    )
    big = line.run("loopscan 400 0")  # 400 spectra of 16 KiB: more than the disk holds
    # (not session "small": its files would go into the full disk, mounted at tmp_path/small)
    small = beamline(redis_client, tmp_path, session="fine").run("loopscan 50 0")
    options = WriterOptions(
        min_free_bytes=512 * 1024, write_bytes=256 * 1024, compression=Compression.NONE
    )
    writers = [
        NexusScanWriter(redis_client, p.key, options, mode=Mode.PARALLEL) for p in (big, small)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        assert writer.join(PROMPT * 6)
    full, fine = writers
    assert full.state is State.FAULT
    assert "disk nearly full" in (full.statistics().reason or "")
    assert fine.state is State.OFF
    assert_file_has_every_value(small)
    with h5py.File(big.document.file, "r") as handle:  # what fitted is there, readable
        entry = handle[entry_name(big.document.number)]
        kept = entry["measurement/mca1"][()]
        assert 0 < len(kept) < 400
        np.testing.assert_array_equal(kept, big.values["mca1:spectrum"][: len(kept)])
        # Not complete: STOPPED, so that a service taking the session writes it again.
        assert text(entry["writer/status"]) == "STOPPED"
        messages = [m.decode() for m in entry["writer/messages"][()]]
        assert any("disk nearly full" in m for m in messages)
    assert full.unfinished is not None and "disk nearly full" in full.unfinished
    assert fine.unfinished is None


def test_bad_channel_faults_the_scan_records_why_and_writes_the_rest(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    session = SessionPublisher(redis_client, "badch")
    scan = started_scan(
        session,
        name="ct",
        title="ct",
        file=str(tmp_path / "bad.h5"),
        channels=[{"name": "good", "dtype": "<f8"}, {"name": "bad", "dtype": "<u2", "shape": [4]}],
    )
    scan.send("good", [1.0, 2.0])
    scan.send("bad", np.ones((1, 4)))
    bad_entry = {"i": 1, "n": 1, "d": b"x"}  # one byte where a point needs eight
    stream_id = text_of(redis_client.xadd(Keys.channel(scan.key, 1), bad_entry))  # type: ignore[arg-type]
    scan.send("good", [3.0])
    scan.close()
    writer = write_scan(redis_client, scan.key)
    assert writer.state is State.FAULT
    reason = writer.statistics().reason or ""
    assert "'bad'" in reason and stream_id in reason and "payload has 1 bytes" in reason
    with h5py.File(tmp_path / "bad.h5", "r") as handle:
        entry = handle[entry_name(scan.document.number)]
        np.testing.assert_array_equal(entry["measurement/good"][()], [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(entry["measurement/bad"][()], np.ones((1, 4)))
        messages = [m.decode() for m in entry["writer/messages"][()]]
        assert any(stream_id in m for m in messages)
        assert text(entry["writer/status"]) == "FAULT"
        assert text(entry["end_reason"]) == "SUCCESS"  # the scan itself went well


def test_silent_publisher_gets_its_scan_closed_after_the_inactivity_timeout(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    scan = started_scan(
        SessionPublisher(redis_client, "silent"),
        name="ct",
        title="ct",
        file=str(tmp_path / "silent.h5"),
        channels=[{"name": "c", "dtype": "<i4"}],
    )
    scan.send("c", [1, 2, 3])  # ... and the publisher is gone
    writer = write_scan(redis_client, scan.key, options=WriterOptions(inactivity_timeout=0.5))
    with h5py.File(tmp_path / "silent.h5", "r") as handle:
        entry = handle[entry_name(scan.document.number)]
        np.testing.assert_array_equal(entry["measurement/c"][()], [1, 2, 3])
        assert text(entry["end_reason"]) == "FAILURE"
        assert "nothing was published for 0.5 s" in text(entry["end_message"])
        assert "end_time" in entry
    assert writer.state is State.OFF


def test_redis_connections_dropped_mid_scan_lose_nothing(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    line = beamline(redis_client, tmp_path, mca=True)
    scan = started_scan(
        line.publisher,
        name="ct",
        title="ct",
        file=str(tmp_path / "drop.h5"),
        channels=[{"name": "c", "dtype": "<i8"}],
    )
    writer = NexusScanWriter(redis_client, scan.key, mode=Mode.PARALLEL)
    writer.start()
    scan.send("c", np.arange(0, 100))
    wait_until(lambda: writer.statistics().events_processed >= 3, "the first points are written")
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the writer's connection among them
    scan.send("c", np.arange(100, 200))
    scan.close()
    assert writer.join(PROMPT * 4) and writer.state is State.OFF
    with h5py.File(tmp_path / "drop.h5", "r") as handle:
        entry = handle[entry_name(scan.document.number)]
        np.testing.assert_array_equal(entry["measurement/c"][()], np.arange(200))


def test_stopped_writer_closes_the_file_with_status_stopped(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    scan = started_scan(
        SessionPublisher(redis_client, "stop"),
        name="ct",
        title="ct",
        file=str(tmp_path / "stop.h5"),
        channels=[{"name": "c", "dtype": "<i4"}],
    )
    scan.send("c", [7])
    writer = NexusScanWriter(redis_client, scan.key, mode=Mode.CONCURRENT)
    writer.start()
    wait_until(lambda: writer.statistics().events_processed >= 3, "the point is written")
    writer.stop(wait=True, timeout=PROMPT)
    with h5py.File(tmp_path / "stop.h5", "r") as handle:
        entry = handle[entry_name(scan.document.number)]
        assert text(entry["writer/status"]) == "STOPPED"
        assert entry["measurement/c"][()].tolist() == [7]
    assert entry_of is not None


def test_redis_server_going_away_mid_scan_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedRedis(persistent=True) as server:
        client = connect(server.url)
        scan = started_scan(
            SessionPublisher(client, "away"),
            name="ct",
            title="ct",
            file=str(tmp_path / "away.h5"),
            channels=[{"name": "c", "dtype": "<i8"}],
        )
        writer = NexusScanWriter(client, scan.key, WriterOptions(retry_max_delay=0.2))
        writer.start()
        scan.send("c", np.arange(0, 100))
        wait_until(
            lambda: writer.statistics().events_processed >= 3, "the first points are written"
        )
        with caplog.at_level(logging.WARNING, logger="nexus_writer.scan_writer"):
            server.halt()  # Redis goes away in the middle of the scan
            wait_until(lambda: "Redis unreachable" in caplog.text, "the writer notices")
            server.resume()  # ... and comes back, with its data
        scan.send("c", np.arange(100, 200))
        scan.close()
        assert writer.join(PROMPT * 4) and writer.state is State.OFF
    with h5py.File(tmp_path / "away.h5", "r") as handle:
        entry = handle[entry_name(scan.document.number)]
        np.testing.assert_array_equal(entry["measurement/c"][()], np.arange(200))
        assert text(entry["end_reason"]) == "SUCCESS"

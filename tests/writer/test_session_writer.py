"""NexusSessionWriter: a scan writer per new scan, one shared consumer thread, bounded
memory over many scans, and one bad scan never stopping the others."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import pytest
import redis

from nexus_writer.nexus import files
from nexus_writer.nexus import master as master_files
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import Keys, SessionPublisher
from nexus_writer.session_writer import NexusSessionWriter
from nexus_writer.simulator import Beamline, Detectors, PublishedScan
from nexus_writer.subscriber import State
from sync_primitives import AsyncResult
from tests.conftest import PROMPT, wait_until
from tests.writer.helpers import assert_file_has_every_value, entry_of, started_scan, text


def publish_in_thread(beamline: Beamline, commands: list[str]) -> AsyncResult[list[PublishedScan]]:
    done: AsyncResult[list[PublishedScan]] = AsyncResult()
    threading.Thread(
        target=lambda: done.set([beamline.run(c) for c in commands]), daemon=True
    ).start()
    return done


def test_concurrent_scans_of_a_session_are_all_written(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    writer = NexusSessionWriter(redis_client, "sess", WriterOptions(roots=(tmp_path,)))
    writer.start()
    lines = [
        Beamline(
            SessionPublisher(redis_client, "sess"),
            root=str(tmp_path / f"bl{i}"),
            detectors=Detectors(mca=True),
            record=True,
        )
        for i in range(3)
    ]
    pending = [
        publish_in_thread(line, ["loopscan 20 0.001", "ascan robx 0 1 9 0"]) for line in lines
    ]
    published = [scan for p in pending for scan in p.get(PROMPT * 4)]
    assert writer.wait_for_scans([p.key for p in published], PROMPT * 4)
    for scan in published:
        assert_file_has_every_value(scan)
    stats = writer.session_statistics()
    assert (stats.scans_started, stats.scans_succeeded, stats.scans_failed) == (6, 6, 0)
    # The session's figures count each ended scan's events once, as its own figures did.
    assert stats.events_received == sum(s.events_received for s in stats.recent) > 0
    assert stats.events_processed == stats.events_received
    assert stats.queue_depth == 0 and stats.latency_p99 is None  # no scan running
    writer.stop(wait=True, timeout=PROMPT)
    assert writer.state is State.OFF


def test_a_bad_scan_fails_alone_and_the_session_goes_on(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    writer = NexusSessionWriter(redis_client, "mixed", WriterOptions(roots=(tmp_path,)))
    writer.start()
    line = Beamline(SessionPublisher(redis_client, "mixed"), root=str(tmp_path), record=True)
    first = line.run("loopscan 3 0")
    assert writer.wait_for_scans([first.key], PROMPT)
    bad = SessionPublisher(redis_client, "mixed").new_scan(
        name="ct", title="ct", file="/proc/not/allowed.h5", channels=[{"name": "c", "dtype": "<i4"}]
    )
    # The spoilt scan is made in a session nobody follows and announced once spoilt: made in
    # "mixed" and spoilt after, the writer could read it valid first (seen in CI: it then
    # waited for the valid scan's end, which never came).
    broken = SessionPublisher(redis_client, "staging").new_scan(
        name="ct", title="ct", file=str(tmp_path / "x.h5"), channels=[]
    )
    doc = json.loads(redis_client.get(broken.key))  # type: ignore[arg-type]
    redis_client.set(broken.key, json.dumps({**doc, "session": "mixed", "protocol": "9.0"}))
    redis_client.xadd(
        Keys().session_scans("mixed"), {"key": broken.key, "name": "ct", "number": doc["number"]}
    )
    last = line.run("loopscan 4 0")
    assert writer.wait_for_scans([bad.key, broken.key, last.key], PROMPT * 2)
    assert_file_has_every_value(last)
    failures = {
        s.name: s.reason or "" for s in writer.session_statistics().recent if s.state == "FAULT"
    }
    assert "outside the writer's root directories" in failures[bad.key]
    assert "protocol 9.0" in failures[broken.key]
    assert writer.state is State.ON
    writer.stop(wait=True, timeout=PROMPT)


@pytest.mark.timeout(180)  # 200 scans: slow on a loaded 2-core machine
def test_memory_stays_bounded_over_many_scans(redis_client: redis.Redis, tmp_path: Path) -> None:
    writer = NexusSessionWriter(
        redis_client, "many", WriterOptions(roots=(tmp_path,)), keep_finished=10
    )  # statistics of 10 scans, keys of 100
    writer.start()
    line = Beamline(
        SessionPublisher(redis_client, "many"),
        root=str(tmp_path),
        batch=2,
        detectors=Detectors(counters=1),
    )
    keys = [line.run("loopscan 2 0").key for _ in range(200)]
    wait_until(
        lambda: writer.session_statistics().scans_succeeded == 200,
        "all are written",
        timeout=PROMPT * 24,
    )
    remembered = sum(writer.wait_for_scans([key], 0) for key in keys)
    assert remembered == 100  # the keys of the 100 scans that ended last; the rest forgotten
    stats = writer.session_statistics()
    assert stats.scans_started == 200 and stats.scans_failed == 0
    assert stats.scans_active == 0
    assert len(stats.recent) == 10  # only the newest statistics are kept
    # The scans are alike (their events vary by one with how the publisher's batches fall):
    # the session counted each one's events once, also those of the forgotten scans.
    per_scan = [s.events_received for s in stats.recent]
    assert stats.events_received == stats.events_processed
    assert 200 * (max(per_scan) - 1) <= stats.events_received <= 200 * (min(per_scan) + 1)
    assert min(per_scan) > 0
    writer.stop(wait=True, timeout=PROMPT)
    assert writer.scans() == [] and files.open_paths() == []
    with h5py.File(line.session_file, "r") as handle:
        assert len(handle) == 200


def test_stopping_the_session_closes_running_scans(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    writer = NexusSessionWriter(redis_client, "halt", WriterOptions(roots=(tmp_path,)))
    writer.start()
    scan = started_scan(
        SessionPublisher(redis_client, "halt"),
        name="ct",
        title="ct",
        file=str(tmp_path / "halt.h5"),
        channels=[{"name": "c", "dtype": "<i4"}],
    )
    scan.send("c", [1, 2])
    wait_until(
        lambda: any(w.statistics().events_processed >= 3 for w in writer.scans()),
        "the scan writer has written the points",
    )
    writer.stop(wait=True, timeout=PROMPT * 2)
    assert files.open_paths() == []
    with h5py.File(tmp_path / "halt.h5", "r") as handle:
        entry = entry_of(handle, PublishedScan(scan.key, scan.document, 2, None))  # type: ignore[arg-type]
        assert text(entry["writer/status"]) == "STOPPED"
        assert entry["measurement/c"][()].tolist() == [1, 2]
        assert "end_time" in entry
        # The scan itself had not ended: no end of its own; the writer says why it stopped.
        assert "end_reason" not in entry and "end_message" not in entry
        messages = [m.decode() for m in entry["writer/messages"][()]]
        assert "the writer stopped before the scan closed" in messages


def test_while_a_scan_runs_only_its_own_file_is_open(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The session's file is open only for a moment per scan (to name and link its entry):
    a crash while scans run cannot damage it, nor the files of finished scans."""
    writer = NexusSessionWriter(redis_client, "own", WriterOptions(roots=(tmp_path,)))
    writer.start()
    session = SessionPublisher(redis_client, "own")
    master = tmp_path / "own.h5"
    scans = [
        started_scan(
            session,
            name="timescan",
            title="timescan",
            file=str(master),
            channels=[{"name": "c", "dtype": "<f8"}],
        )
        for _ in range(2)
    ]
    for scan in scans:
        scan.send("c", [1.0, 2.0])
    scan_files = {tmp_path / "own_scans" / "scan_0001.h5", tmp_path / "own_scans" / "scan_0002.h5"}
    wait_until(lambda: set(files.open_paths()) == scan_files, "both scans write their files")

    def links() -> list[str]:
        # Under the writer's own lock of session files, and without HDF5 locking as the
        # writer opens files in this process: a reader in another process needs neither.
        with master_files._lock_of(master):
            if not master.exists():
                return []
            with h5py.File(master, "r", locking=False) as handle:
                return [handle.get(name, getlink=True).filename for name in handle]

    wait_until(lambda: len(links()) == 2, "both scans are linked")
    assert links() == ["own_scans/scan_0001.h5", "own_scans/scan_0002.h5"]  # relative
    assert set(files.open_paths()) == scan_files  # not the session's file
    for scan in scans:
        scan.close()
    assert writer.wait_for_scans([s.key for s in scans], PROMPT * 4)
    writer.stop(wait=True, timeout=PROMPT)
    assert files.open_paths() == []

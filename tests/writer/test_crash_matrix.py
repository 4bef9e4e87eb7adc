"""The crash matrix: the real service goes down at a random instant (SIGKILL, SIGTERM, or
SIGKILL with a Redis restart before it comes back) while a session of concurrent scans
(scalars, spectra, detector frames in files) is published; it is started again; every scan
ends up complete, equal to what was published, once.

Each trial draws its kill instant from its seed. ``make test`` runs a few trials;
``make chaos`` runs ``CRASH_TRIALS`` (default there: 20).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from pathlib import Path

import h5py
import pytest
import redis

from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors, PublishedScan
from sync_primitives import AsyncResult
from tests.writer.helpers import assert_file_has_every_value, text, wait_until_all_acknowledged
from tests.writer.test_service import _service, lines_of, wait_for_line

pytestmark = pytest.mark.stress

TRIALS = int(os.environ.get("CRASH_TRIALS", "3"))

#: Three beamline branches publishing at once into one session, each into its own file.
BRANCHES = {
    "scalars": ({}, ["ascan robx 0 1 30 0.004", "loopscan 40 0.003"]),
    "spectra": ({"mca": True}, ["dscan roby -1 1 25 0.004", "timescan 0.004 30"]),
    "frames": (
        {"image": "file", "image_shape": (16, 20), "frames_per_file": 7},
        ["ascan robz 0 1 20 0.005", "loopscan 25 0.004"],
    ),
}


def publish(client: redis.Redis, root: Path, session: str) -> AsyncResult[list[PublishedScan]]:
    """All branches at once, in threads; the result holds every published scan."""
    done: AsyncResult[list[PublishedScan]] = AsyncResult()
    results: list[list[PublishedScan]] = []

    def branch(name: str) -> None:
        detectors, commands = BRANCHES[name]
        line = Beamline(
            SessionPublisher(client, session),
            root=str(root / name),
            detectors=Detectors(**detectors),  # type: ignore[arg-type]
            record=True,
        )
        results.append([line.run(command) for command in commands])
        if len(results) == len(BRANCHES):
            done.set([scan for scans in results for scan in scans])

    for name in BRANCHES:
        threading.Thread(target=branch, args=(name,), daemon=True).start()
    return done


#: How the service goes down: killed, stopped, killed while Redis restarts too, or killed
#: after write errors (its files limited in size: the spectra scans meet EFBIG, as with a
#: quota) from which it comes back without the limit.
WAYS = ["SIGKILL", "SIGTERM", "SIGKILL+Redis restart", "EFBIG+SIGKILL"]
#: Bytes per file for EFBIG: the scalar and frame scans fit, the spectra (uncompressed)
#: do not.
FILE_SIZE_LIMIT = 200_000


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("seed", range(TRIALS))
def test_service_down_at_a_random_instant_loses_nothing(
    redis_server: EmbeddedRedis, tmp_path: Path, seed: int, way: str
) -> None:
    rng = random.Random(f"{seed}-{way}")
    session = f"crash{seed}-{WAYS.index(way)}"  # a session of its own in the shared Redis
    # A Redis restart needs a server of its own, persistent (Redis is the log).
    own = EmbeddedRedis(persistent=True).start() if "Redis" in way else None
    url = own.url if own is not None else redis_server.url
    client = redis.Redis.from_url(url)
    limited = "EFBIG" in way
    service = _service(
        url,
        tmp_path,
        *(["--compression", "none"] if limited else []),
        session=session,
        file_size_limit=FILE_SIZE_LIMIT if limited else None,
    )
    try:
        lines = lines_of(service.stderr)
        wait_for_line(lines, f"session {session}: following from announcement")
        published = publish(client, tmp_path, session)
        if limited:  # a write error first, then the kill at a random instant after it
            wait_for_line(lines, "stays pending (I/O error")
        down_after = rng.uniform(0.05, 0.8)  # the instant this trial is about
        with contextlib.suppress(TimeoutError):  # still publishing: the usual case
            published.get(down_after)
        service.send_signal(signal.SIGTERM if way == "SIGTERM" else signal.SIGKILL)
        service.wait(30)
        scans = published.get(60)  # the beamline goes on while the writer is down
        if limited:
            assert all(p.stat().st_size <= FILE_SIZE_LIMIT for p in tmp_path.rglob("*.h5"))
        if own is not None:
            own.halt()
            own.resume()
        service = _service(url, tmp_path, session=session)
        lines = lines_of(service.stderr)
        wait_for_line(lines, f"session {session}: following from announcement")
        wait_until_all_acknowledged(client, session, len(scans))
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
    finally:
        if service.poll() is None:
            service.kill()
        client.close()
        if own is not None:
            own.stop()
    assert_every_scan_written_once(scans)


def assert_every_scan_written_once(scans: list[PublishedScan]) -> None:
    """Every scan complete and equal to what was published, each once, SUCCEEDED, in files
    that nxcheck finds clean."""
    for scan in scans:
        assert_file_has_every_value(scan)
    for master in {Path(s.document.file) for s in scans}:
        expected = sum(1 for s in scans if Path(s.document.file) == master)
        with h5py.File(master, "r") as handle:
            entries = sorted(handle)
            assert len(entries) == expected, entries  # each scan once
            for name in entries:
                assert text(handle[name]["writer/status"]) == "SUCCEEDED", (master, name)
        assert nxcheck_errors(str(master)) == 0

"""The NexusWriter device: launch to ON, and what a client polling every attribute costs.

Run with ``make bench`` (or ``python -m benchmarks.bench_device [--write FILE]``).

* Launch to ON: ``NexusWriterService`` started on an embedded Tango database (its device
  defined, Redis running); seconds from the process's start to the device's state ON, as a
  DeviceProxy sees it.
* Writing with monitoring: one scan (10 float64 channels, 100,000 points, 100 points per
  entry) published into a running service, from the publication's start to the scan done
  with (acknowledged in the session's consumer group), by ``nexus-writer run`` alone, by the
  device, and by the device while a client reads every attribute ten times a second; in
  alternating rounds, medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import redis
import tango

from benchmarks._report import markdown_table, report, verdict
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.service import all_acknowledged
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.server import register

LAUNCHES = 5
ROUNDS = 5
IDLE_READS = 20
CHANNELS, POINTS, BATCH = 10, 100_000, 100
_sessions = iter(range(1, 1_000_000))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def _is_on(proxy: tango.DeviceProxy) -> bool:
    return bool(proxy.state() == tango.DevState.ON)


def _acknowledged(client: redis.Redis, session: str) -> bool:
    try:
        return all_acknowledged(client, session)
    except redis.ResponseError:  # no announcement or group yet
        return False


def _publish(client: redis.Redis, session: str, root: Path) -> None:
    data = {f"c{i}": np.random.default_rng(i).random(POINTS) for i in range(CHANNELS)}
    scan = SessionPublisher(client, session).new_scan(
        name="bench",
        title="bench",
        file=str(root / session / f"{session}.h5"),
        channels=[{"name": n, "dtype": "float64", "shape": []} for n in data],
    )
    scan.prepare()
    scan.start()
    for first in range(0, POINTS, BATCH):
        for name, values in data.items():
            scan.send(name, values[first : first + BATCH])
    scan.close()


@contextmanager
def _device(database: EmbeddedTangoDatabase, url: str, root: Path, session: str) -> Iterator[str]:
    name = f"bench/nexus/{session}"
    register(session, session, name, [("redis_url", url), ("roots", str(root))])
    with DeviceServer(
        [sys.executable, "-m", "nexus_writer.tango.server", session],
        tango_host=database.tango_host,
    ):
        proxy = tango.DeviceProxy(name)
        _wait(lambda: proxy.state() == tango.DevState.ON, f"{name} ON")
        yield name


@contextmanager
def _run(url: str, root: Path, session: str) -> Iterator[str]:
    ready = root / f"{session}.ready"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "nexus_writer.cli", "run", "--redis", url),
            *("--session", session, "--root", str(root), "--since", "all"),
            *("--ready-file", str(ready)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(ready.exists, "nexus-writer run ready")
        yield session
    finally:
        process.terminate()
        process.wait(60)


def launch_to_on(database: EmbeddedTangoDatabase, url: str, root: Path) -> list[float]:
    times = []
    for _ in range(LAUNCHES):
        session = f"launch{next(_sessions)}"
        name = f"bench/nexus/{session}"
        register(session, session, name, [("redis_url", url), ("roots", str(root))])
        started = time.perf_counter()
        with DeviceServer(
            [sys.executable, "-m", "nexus_writer.tango.server", session],
            tango_host=database.tango_host,
        ):
            _wait(partial(_is_on, tango.DeviceProxy(name)), f"{name} ON")
            times.append(time.perf_counter() - started)
    return times


def write_seconds(
    kind: str,
    database: EmbeddedTangoDatabase,
    client: redis.Redis,
    url: str,
    root: Path,
    *,
    reads: list[float],
    idle: list[float],
) -> float:
    """Seconds to publish and write the scan; ``reads`` gets the seconds of each read of
    every attribute by the polling client ("polled") while it writes, ``idle`` those of
    IDLE_READS reads before the scan."""
    session = f"write{next(_sessions)}"
    service = _run(url, root, session) if kind == "run" else _device(database, url, root, session)
    with service as name:
        stop = threading.Event()
        poller = None
        if kind == "polled":

            def poll() -> None:
                proxy = tango.DeviceProxy(name)
                every = list(proxy.get_attribute_list())
                for _ in range(IDLE_READS):
                    began = time.perf_counter()
                    proxy.read_attributes(every)
                    idle.append(time.perf_counter() - began)
                polling.set()
                while not stop.wait(0.1):
                    began = time.perf_counter()
                    proxy.read_attributes(every)
                    reads.append(time.perf_counter() - began)

            polling = threading.Event()
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            polling.wait(60)
        started = time.perf_counter()
        _publish(client, session, root)
        _wait(lambda: _acknowledged(client, session), f"{session} written", 600)
        elapsed = time.perf_counter() - started
        stop.set()
        if poller is not None:
            poller.join(5)
    return elapsed


def measure() -> str:
    with (
        EmbeddedRedis() as redis_server,
        EmbeddedTangoDatabase() as database,
        tempfile.TemporaryDirectory() as directory,
    ):
        os.environ["TANGO_HOST"] = database.tango_host
        root = Path(directory)
        launches = launch_to_on(database, redis_server.url, root)
        client = connect(redis_server.url)
        seconds: dict[str, list[float]] = {"run": [], "device": [], "polled": []}
        reads: list[float] = []
        idle: list[float] = []
        for _ in range(ROUNDS):
            for kind, values in seconds.items():
                values.append(
                    write_seconds(
                        kind, database, client, redis_server.url, root, reads=reads, idle=idle
                    )
                )
        client.close()
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    launch = statistics.median(launches)
    points = CHANNELS * POINTS
    ratio = median["run"] / median["polled"]
    return (
        f"launch to ON: {LAUNCHES} launches; writing: {ROUNDS} alternating rounds of one scan "
        f"of {CHANNELS} channels x {POINTS:,} points, medians.\n\n"
        + markdown_table(
            ["what", "figure", "ratio", "target", "verdict"],
            [
                [
                    "NexusWriterService: launch to ON (median; max)",
                    f"{launch:.2f} s; {max(launches):.2f} s",
                    "",
                    "< 2 s",
                    verdict(launch < 2.0),
                ],
                [
                    "nexus-writer run: publish + write",
                    f"{median['run']:.2f} s ({points / median['run'] / 1e6:.2f} M points/s)",
                    "",
                    "",
                    "",
                ],
                [
                    "NexusWriter device: publish + write",
                    f"{median['device']:.2f} s",
                    f"{median['run'] / median['device']:.2f}x run",
                    "",
                    "",
                ],
                [
                    "device, a client reading every attribute at 10 Hz",
                    f"{median['polled']:.2f} s",
                    f"{ratio:.2f}x run",
                    ">= 0.9x",
                    verdict(ratio >= 0.9),
                ],
                [
                    f"that client's reads of every attribute, idle ({len(idle)} reads; p50; p99)",
                    _milliseconds(idle),
                    "",
                    "",
                    "",
                ],
                [
                    f"the same while writing ({len(reads)} reads; p50; p99)",
                    _milliseconds(reads),
                    f"{np.percentile(reads, 50) / np.percentile(idle, 50):.1f}x idle (p50)",
                    "",
                    "",
                ],
            ],
        )
    )


def _milliseconds(seconds: list[float]) -> str:
    return f"{np.percentile(seconds, 50) * 1e3:.1f} ms; {np.percentile(seconds, 99) * 1e3:.1f} ms"


if __name__ == "__main__":
    report("device", __doc__.split("\n\n")[0], measure)

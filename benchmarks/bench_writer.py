"""End-to-end writer speed: Redis to NeXus file, against raw h5py and raw Redis reads of the
same data, in the same run.

Run with ``make bench`` (or ``python -m benchmarks.bench_writer [--write FILE]``). An
embedded redis-server holds each scan in full before the writer starts, so the figure is
the writer's own throughput (reading, decoding, batching, writing, flushing); the
baselines handle exactly the same data:

* raw h5py: appending the published batches to the same kind of datasets (chunked,
  growing; the same compression), one write per published entry, no flush;
* raw Redis: redis-py ``xread`` of all the scan's entries, no decoding.

Latency: a paced scan (10 scalar channels at 1 kHz, 5 points per entry) is written while it
is published; each batch's time from publication to flushed in the file, where another
process can read it (tests/writer/test_live_reading.py checks that from another process).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from typing import Any

import h5py
import numpy as np
import redis

from benchmarks._report import markdown_table, report
from nexus_writer.lease import SessionLease
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import Keys, ScanReader, SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.subscriber import Mode, State, SubscriberStatistics

ROUNDS = 3
SCALAR_CHANNELS, SCALAR_POINTS, SCALAR_BATCH = 10, 100_000, 100
FRAMES, FRAME_SHAPE = 200, (512, 1024)
PACED_SECONDS, PACED_RATE, PACED_BATCH = 3.0, 1000, 5


def publish(
    client: redis.Redis,
    path: str,
    channels: list[dict[str, Any]],
    data: dict[str, np.ndarray[Any, Any]],
    batch: int,
) -> str:
    scan = SessionPublisher(client, "bench").new_scan(
        name="bench", title="bench", file=path, channels=channels
    )
    scan.prepare()
    scan.start()
    total = len(next(iter(data.values())))
    for first in range(0, total, batch):
        for name, values in data.items():
            scan.send(name, values[first : first + batch])
    scan.close()
    return scan.key


def write(client: redis.Redis, key: str) -> float:
    """Seconds for a NexusScanWriter (parallel mode) to write the whole scan."""
    started = time.perf_counter()
    writer = NexusScanWriter(client, key, WriterOptions(), mode=Mode.PARALLEL)
    writer.start(wait=True, timeout=600)
    if writer.state is not State.OFF:
        raise RuntimeError(f"the writer failed: {writer.statistics().reason}")
    return time.perf_counter() - started


def raw_h5py(path: str, data: dict[str, np.ndarray[Any, Any]], batch: int) -> float:
    options = WriterOptions()
    started = time.perf_counter()
    with h5py.File(path, "w", locking=False) as handle:
        datasets = {}
        for name, values in data.items():
            point = values.shape[1:]
            rows = max(1, min(len(values), options.chunk_bytes // max(1, values[0].nbytes)))
            extra = options.compression.dataset_options() if point else {}
            datasets[name] = handle.create_dataset(
                name,
                shape=(0, *point),
                maxshape=(None, *point),
                chunks=(rows, *point),
                dtype=values.dtype,
                **extra,
            )
        total = len(next(iter(data.values())))
        for first in range(0, total, batch):
            for name, values in data.items():
                part = values[first : first + batch]
                dataset = datasets[name]
                dataset.resize(first + len(part), axis=0)
                dataset[first : first + len(part)] = part
    return time.perf_counter() - started


def raw_redis(client: redis.Redis, key: str, channels: int) -> float:
    streams: dict[Any, Any] = {Keys.channel(key, i): "0-0" for i in range(channels)}
    count = ScanReader(client, key).count  # the writer's own requests: same COUNT
    started = time.perf_counter()
    while streams:
        response: Any = client.xread(streams, count=count)
        for stream, entries in response:
            name = stream.decode()
            streams[name] = entries[-1][0]
            if b"end" in entries[-1][1]:
                del streams[name]
    return time.perf_counter() - started


def throughput(
    client: redis.Redis,
    directory: str,
    channels: list[dict[str, Any]],
    data: dict[str, np.ndarray[Any, Any]],
    batch: int,
) -> tuple[float, float, float]:
    """Medians of (writer, raw h5py, raw Redis) seconds over alternating rounds."""
    ours, h5, rd = [], [], []
    case = channels[0]["name"]
    for round_ in range(ROUNDS):
        key = publish(client, f"{directory}/{case}_writer_{round_}.h5", channels, data, batch)
        ours.append(write(client, key))
        h5.append(raw_h5py(f"{directory}/{case}_raw_{round_}.h5", data, batch))
        rd.append(raw_redis(client, key, len(channels)))
        client.flushall()
    return statistics.median(ours), statistics.median(h5), statistics.median(rd)


def paced(
    client: redis.Redis, directory: str, lease: SessionLease | None = None
) -> SubscriberStatistics:
    """A paced scan written while it is published; the writer's statistics at its end."""
    channels = [{"name": f"c{i}", "dtype": "<f8"} for i in range(SCALAR_CHANNELS)]
    scan = SessionPublisher(client, "paced").new_scan(
        name="timescan",
        title="paced",
        file=f"{directory}/paced_{time.monotonic_ns()}.h5",
        channels=channels,
    )
    scan.prepare()
    scan.start()
    writer = NexusScanWriter(client, scan.key, WriterOptions(), mode=Mode.PARALLEL, lease=lease)
    writer.start()

    def publish_paced() -> None:
        start, sent = time.time(), 0
        while sent < PACED_SECONDS * PACED_RATE:
            time.sleep(max(0.0, start + (sent + PACED_BATCH) / PACED_RATE - time.time()))
            block = np.full(PACED_BATCH, float(sent))
            for i in range(SCALAR_CHANNELS):
                scan.send(f"c{i}", block)
            sent += PACED_BATCH
        scan.close()

    threading.Thread(target=publish_paced, daemon=True).start()
    writer.join(PACED_SECONDS * 20)
    return writer.statistics()


def paced_latency(client: redis.Redis, directory: str) -> tuple[float, float, float]:
    stats = paced(client, directory)
    if stats.latency_p50 is None or stats.latency_p99 is None or stats.latency_max is None:
        raise RuntimeError("no latency was measured")
    return stats.latency_p50, stats.latency_p99, stats.latency_max


def measure() -> str:
    rng = np.random.default_rng(0)
    scalar_channels = [{"name": f"c{i}", "dtype": "<f8"} for i in range(SCALAR_CHANNELS)]
    scalars = {f"c{i}": rng.random(SCALAR_POINTS) for i in range(SCALAR_CHANNELS)}
    frame_channels = [{"name": "cam", "dtype": "<u2", "shape": list(FRAME_SHAPE), "role": "image"}]
    frames = {"cam": rng.poisson(50, (FRAMES, *FRAME_SHAPE)).astype("<u2")}
    mbytes = frames["cam"].nbytes / 1e6
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as directory:
        client = connect(server.url)
        s_ours, s_h5, s_rd = throughput(client, directory, scalar_channels, scalars, SCALAR_BATCH)
        f_ours, f_h5, f_rd = throughput(client, directory, frame_channels, frames, 1)
        p50, p99, worst = paced_latency(client, directory)
    rows = [
        [
            "scalars: 10 float64 channels, 100 points per entry",
            f"{SCALAR_POINTS / s_ours:,.0f} points/s",
            f"{SCALAR_POINTS / s_h5:,.0f} points/s",
            f"{s_h5 / s_ours:.2f}x",
            f"{SCALAR_POINTS / s_rd:,.0f} points/s",
            f"{s_rd / s_ours:.2f}x",
        ],
        [
            "inline frames: 512x1024 uint16, bitshuffle-LZ4, one per entry",
            f"{mbytes / f_ours:,.0f} MB/s",
            f"{mbytes / f_h5:,.0f} MB/s",
            f"{f_h5 / f_ours:.2f}x",
            f"{mbytes / f_rd:,.0f} MB/s",
            f"{f_rd / f_ours:.2f}x",
        ],
    ]
    latency = markdown_table(
        ["paced scan", "p50", "p99", "max"],
        [
            [
                f"10 scalar channels at {PACED_RATE} Hz, {PACED_BATCH} points per entry",
                f"{p50 * 1e3:.1f} ms",
                f"{p99 * 1e3:.1f} ms",
                f"{worst * 1e3:.1f} ms",
            ]
        ],
    )
    return (
        f"medians of {ROUNDS} alternating rounds, embedded redis-server, files in a temporary "
        "directory. Each ratio is our speed over the baseline's (above 1: ours is faster).\n\n"
        + markdown_table(
            [
                "case",
                "nexus-writer (Redis to file)",
                "raw h5py appends",
                "ours / raw h5py",
                "raw Redis reads",
                "ours / raw Redis",
            ],
            rows,
        )
        + "\n\nLatency from publication to flushed in the file (readable by another process):\n\n"
        + latency
    )


if __name__ == "__main__":
    report("bench_writer", __doc__.splitlines()[0], measure)

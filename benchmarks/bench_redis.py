"""Reader throughput against raw redis-py XREAD of the same entries, in the same run.

Run with ``make bench`` (or ``python -m benchmarks.bench_redis [--write FILE]``). A private
redis-server on loopback holds one scan per case; ours (``ScanReader``, which also decodes
every payload into numpy arrays and checks indices) and the baseline (redis-py's ``xread``,
which only returns the raw fields) read all its entries, alternating, several rounds;
figures are medians.

Cases and target (issue 3): ours at least 0.8x the baseline for

* scalar batches: a float64 channel, 100 points per entry (points/s);
* 1 MiB arrays: a 512x1024 uint16 image channel, one frame per entry (MB/s).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from benchmarks._report import markdown_table, report, verdict
from nexus_writer.protocol import Keys, PointsEvent, ScanReader, SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis

ROUNDS = 5
SCALAR_ENTRIES, SCALAR_BATCH = 2_000, 100
FRAME_ENTRIES, FRAME_SHAPE = 200, (512, 1024)
COUNT = 1000  # entries per XREAD at most, both sides (see same_count)


def publish(
    client: redis.Redis, shape: tuple[int, ...], dtype: str, entries: int, batch: int
) -> str:
    scan = SessionPublisher(client, "bench").new_scan(
        name="bench",
        title="bench",
        file="/dev/null",
        channels=[{"name": "c", "dtype": dtype, "shape": list(shape)}],
    )
    scan.prepare()
    scan.start()
    block = np.ones((batch, *shape), dtype)
    for _ in range(entries):
        scan.send("c", block)
    scan.close()
    return scan.key


def ours(client: redis.Redis, key: str) -> tuple[float, int, int]:
    """Seconds, points and payload bytes for the reference reader to read the scan."""
    started = time.perf_counter()
    reader = ScanReader(client, key, count=COUNT)
    points = nbytes = 0
    while not reader.done:
        for event in reader.read(timeout=1.0):
            if isinstance(event, PointsEvent):
                points += event.count
                nbytes += event.data.nbytes  # type: ignore[union-attr]
    return time.perf_counter() - started, points, nbytes


def same_count(client: redis.Redis, key: str) -> int:
    """The COUNT the reader uses for this scan: COUNT, or fewer for large entries (about
    READ_BYTES a read), so that both sides make the same requests."""
    return ScanReader(client, key, count=COUNT).count


def raw(client: redis.Redis, key: str) -> tuple[float, int, int]:
    """The same with redis-py's xread on the channel stream, counting raw payloads."""
    stream = Keys.channel(key, 0)
    count = same_count(client, key)
    started = time.perf_counter()
    last, points, nbytes = "0-0", 0, 0
    while True:
        response: Any = client.xread({stream: last}, count=count, block=1000)
        if not response:
            raise RuntimeError("the scan's stream ended without its end marker")
        entries = response[0][1]
        for entry_id, fields in entries:
            last = entry_id
            if b"end" in fields:
                return time.perf_counter() - started, points, nbytes
            points += int(fields[b"n"])
            nbytes += len(fields[b"d"])


def alternate(
    client: redis.Redis, key: str, rate: Callable[[float, int, int], float]
) -> tuple[float, float]:
    mine, theirs = [], []
    for _ in range(ROUNDS):
        mine.append(rate(*ours(client, key)))
        theirs.append(rate(*raw(client, key)))
    return statistics.median(mine), statistics.median(theirs)


def measure() -> str:
    with EmbeddedRedis() as server:
        client = connect(server.url)
        scalar = publish(client, (), "<f8", SCALAR_ENTRIES, SCALAR_BATCH)
        frames = publish(client, FRAME_SHAPE, "<u2", FRAME_ENTRIES, 1)
        s_ours, s_raw = alternate(client, scalar, lambda s, p, b: p / s)
        f_ours, f_raw = alternate(client, frames, lambda s, p, b: b / s / 1e6)
        version = client.info("server")["redis_version"]
    rows = [
        [
            "scalar batches (float64, 100 points per entry)",
            f"{s_ours:,.0f} points/s",
            f"{s_raw:,.0f} points/s",
            f"{s_ours / s_raw:.2f}x",
            ">= 0.8x",
            verdict(s_ours >= 0.8 * s_raw),
        ],
        [
            "1 MiB frames (512x1024 uint16, one per entry)",
            f"{f_ours:,.0f} MB/s",
            f"{f_raw:,.0f} MB/s",
            f"{f_ours / f_raw:.2f}x",
            ">= 0.8x",
            verdict(f_ours >= 0.8 * f_raw),
        ],
    ]
    return (
        f"medians of {ROUNDS} alternating rounds, embedded redis-server {version} on "
        f"loopback, the same XREAD COUNT on both sides ({COUNT}, or about 16 MiB a read "
        "for large entries).\n\n"
        + markdown_table(
            ["case", "ScanReader (decoded)", "redis-py xread (raw)", "ratio", "target", "verdict"],
            rows,
        )
    )


if __name__ == "__main__":
    report("bench_redis", __doc__.splitlines()[0], measure)

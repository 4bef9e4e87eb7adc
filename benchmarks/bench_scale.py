"""Scale: the writer's cost as the channels per scan, the concurrent scans and the hours grow.

Run with ``make bench`` (the short version) or ``python -m benchmarks.bench_scale [--full]
[--write FILE]``. Everything runs against an embedded redis-server; the publishers run in a
process of their own (:func:`_pace`, raw pipelined XADDs, so that publishing costs the
writer's process nothing), and the writer runs in this process, as the service runs it.

* **channels**: one live scan of N float64 channels at 1 kHz, 100 points per entry, for a
  few seconds: the latency from publication of a batch's *oldest* point to flushed in the
  file (p99 over the scan), the writer process's CPU, and the time the entry's creation
  took (every group and dataset, before the first point). Then the same scan published in
  full before the writer starts: its write time against raw redis-py XREADs of the same
  streams, with the same COUNT, in the same run.
* **scans**: S concurrent scans of 10 channels at 100 Hz (10 points per entry), written by a
  NexusSessionWriter as the service runs it: p99 latency of the oldest point, the worst
  scan's, and CPU.
* **frames**: one-MiB frames (512x1024 uint16) compressed with bitshuffle-LZ4, from memory
  to a file: raw h5py single-threaded (a resize and a write per batch of 16 frames, HDF5
  compressing) against the writer's own HDF5 stage as its consumer calls it (one run per
  frame, up to 8 MiB at a time, chunks compressed by the compression threads), in the same
  run, alternating.
* **rss**: one scan of 100 channels at 1 kHz (100 points per entry) for a while: the
  resident memory of the writer's process sampled along the way, and its growth after a
  warm-up.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import h5py
import hiredis
import numpy as np
import redis

from benchmarks._report import markdown_table, verdict, write_section
from nexus_writer.nexus import files, hdf5
from nexus_writer.nexus.chunk_compression import pool as compression_pool
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import Keys, ScanReader, SessionPublisher
from nexus_writer.protocol.publisher import ScanPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.session_writer import NexusSessionWriter
from nexus_writer.subscriber import Mode, State

SHORT = {
    "channels": [10, 100, 1000, 3000],
    "scans": [1, 10, 50, 100, 200],
    "live_seconds": 4.0,
    "scan_seconds": 4.0,
    "throughput_points": 2000,
    "rss_seconds": 60.0,
    "frames": True,
}
FULL = {**SHORT, "live_seconds": 10.0, "scan_seconds": 10.0, "rss_seconds": 3600.0}
RATE, ENTRY_POINTS = 1000, 100  # channels table: 1 kHz, 100 points per entry
SCANS_CHANNELS, SCANS_RATE, SCANS_ENTRY = 10, 100, 10  # scans table
RSS_CHANNELS = 100
FRAMES, FRAME_SHAPE, FRAME_BATCH, FRAME_ROUNDS = 192, (512, 1024), 16, 3


# -- the publisher process ----------------------------------------------------------------


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _pace(  # noqa: PLR0917  (a process's target takes positional arguments)
    address: tuple[str, int],
    streams: list[bytes],
    entry_points: int,
    rate: float,
    seconds: float,
    ready: Any,
    go: Any,
) -> None:
    """Publish ``entry_points`` float64 points per entry to every stream, ``rate`` points
    a second each, for ``seconds``: one pipelined burst of XADDs per tick, on a raw socket."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()
    n = b"%d" % entry_points
    ready.set()
    go.wait()
    start = time.time()
    first = 0
    while first < rate * seconds:
        time.sleep(max(0.0, start + first / rate - time.time()))
        payload = np.full(entry_points, float(first)).tobytes()
        index = b"%d" % first
        burst = b"".join(
            _command(b"XADD", s, b"*", b"i", index, b"n", n, b"d", payload) for s in streams
        )
        sock.sendall(burst)
        replies = 0
        while replies < len(streams):
            reader.feed(sock.recv(1 << 20))
            while reader.gets() is not False:
                replies += 1
        first += entry_points
    sock.close()


def _publisher(
    url: str, streams: list[bytes], entry_points: int, rate: float, seconds: float
) -> Callable[[], multiprocessing.process.BaseProcess]:
    """A publisher process, ready to go: call the result to start publishing."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    process = context.Process(
        target=_pace,
        args=((host, int(port)), streams, entry_points, rate, seconds, ready, go),
        daemon=True,
    )
    process.start()
    if not ready.wait(60):
        raise RuntimeError("the publisher process did not start")

    def start() -> multiprocessing.process.BaseProcess:
        go.set()
        return process

    return start


def _new_scan(client: redis.Redis, session: str, path: str, channels: int) -> ScanPublisher:
    scan = SessionPublisher(client, session).new_scan(
        name="timescan",
        title=f"{channels} channels",
        file=path,
        channels=[{"name": f"c{i}", "dtype": "<f8"} for i in range(channels)],
    )
    scan.prepare()
    scan.start()
    return scan


def _close(scan: ScanPublisher, total: int) -> None:
    """End every channel at ``total`` points (published by the raw publisher) and close."""
    for channel in scan.document.channels:
        scan._next[channel.name] = total  # the points went by the raw publisher
    scan.close()


def _streams(scan: ScanPublisher) -> list[bytes]:
    return [Keys.channel(scan.key, c.index).encode() for c in scan.document.channels]


def _join(process: multiprocessing.process.BaseProcess, timeout: float) -> None:
    """Wait for the publisher while this thread's hub runs the writers' listeners."""
    deadline = time.monotonic() + timeout
    while process.is_alive() and time.monotonic() < deadline:
        gevent.sleep(0.05)


class _CPU:
    """This process's CPU time over a stretch, as a percentage of one core."""

    def __init__(self) -> None:
        times = os.times()
        self._cpu, self._wall = times.user + times.system, time.monotonic()

    def percent(self) -> float:
        times = os.times()
        return 100 * (times.user + times.system - self._cpu) / (time.monotonic() - self._wall)


def _rss_mib() -> float:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- channels -----------------------------------------------------------------------------


def live(
    client: redis.Redis, url: str, directory: str, channels: int, seconds: float
) -> dict[str, Any]:
    """A live scan of ``channels`` at RATE: oldest-point latency, CPU, entry creation."""
    scan = _new_scan(client, "live", f"{directory}/live_{channels}.h5", channels)
    go = _publisher(url, _streams(scan), ENTRY_POINTS, RATE, seconds)
    writer = NexusScanWriter(client, scan.key, WriterOptions(), mode=Mode.PARALLEL)
    started = time.perf_counter()
    writer.start()
    while writer.url is None and not writer.done():  # the entry is made
        gevent.sleep(0.001)  # the writer's listener runs in this thread's hub
    created = time.perf_counter() - started
    cpu = _CPU()
    process = go()
    _join(process, seconds * 10)
    usage = cpu.percent()
    _close(scan, int(RATE * seconds))
    writer.join(600)
    stats = writer.statistics()
    if writer.state is not State.OFF:
        raise RuntimeError(f"live scan of {channels} channels: {stats.reason}")
    return {"p99": stats.latency_p99, "max": stats.latency_max, "cpu": usage, "create": created}


def throughput(client: redis.Redis, directory: str, channels: int, points: int) -> dict[str, Any]:
    """The scan in Redis in full, then written: writer seconds against raw XREADs."""
    scan = _new_scan(client, "full", f"{directory}/full_{channels}.h5", channels)
    block = np.arange(points, dtype="<f8")
    with client.pipeline(transaction=False) as pipe:
        for first in range(0, points, ENTRY_POINTS):
            for channel in scan.document.channels:
                fields = {"i": first, "n": ENTRY_POINTS, "d": block[first : first + 100].tobytes()}
                pipe.xadd(Keys.channel(scan.key, channel.index), fields)  # type: ignore[arg-type]
            if len(pipe) > 20_000:
                pipe.execute()
        pipe.execute()
    _close(scan, points)
    started = time.perf_counter()
    writer = NexusScanWriter(client, scan.key, WriterOptions(), mode=Mode.PARALLEL)
    writer.start(wait=True, timeout=600)
    ours = time.perf_counter() - started
    if writer.state is not State.OFF:
        raise RuntimeError(f"full scan of {channels} channels: {writer.statistics().reason}")
    streams: dict[Any, Any] = dict.fromkeys(_streams(scan), "0-0")
    count = ScanReader(client, scan.key).count
    started = time.perf_counter()
    while streams:
        response: Any = client.xread(streams, count=count)
        for stream, entries in response:
            streams[stream] = entries[-1][0]
            if b"end" in entries[-1][1]:
                del streams[stream]
    raw = time.perf_counter() - started
    client.flushall()
    return {"ours": ours, "raw": raw, "points": points * channels}


# -- concurrent scans ---------------------------------------------------------------------


def concurrent(
    client: redis.Redis, url: str, directory: str, scans: int, seconds: float
) -> dict[str, Any]:
    """``scans`` live scans at once, written by one session writer."""
    session = f"many{scans}"
    writer = NexusSessionWriter(client, session, WriterOptions())
    writer.start()
    if not writer.following.wait(30):
        raise RuntimeError("the session writer does not follow its session")
    published = [
        _new_scan(client, session, f"{directory}/{session}_{i}.h5", SCANS_CHANNELS)
        for i in range(scans)
    ]
    streams = [s for scan in published for s in _streams(scan)]
    go = _publisher(url, streams, SCANS_ENTRY, SCANS_RATE, seconds)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (  # every entry made, before the first point
        writer.session_statistics().scans_started < scans
        or any(w.url is None for w in writer.scans())
    ):
        gevent.sleep(0.01)
    cpu = _CPU()
    _join(go(), seconds * 10)
    usage = cpu.percent()
    scan_writers = writer.scans()
    p99 = [s.latency_p99 for s in (w.statistics() for w in scan_writers) if s.latency_p99]
    for scan in published:
        _close(scan, int(SCANS_RATE * seconds))
    done = writer.wait_for_scans([s.key for s in published], timeout=600)
    stats = writer.session_statistics()
    writer.stop(wait=True, timeout=60)
    if not done or stats.scans_failed:
        raise RuntimeError(f"{scans} scans: {stats.scans_failed} failed, all done: {done}")
    return {
        "p99": statistics.median(p99) if p99 else None,
        "worst": max(p99) if p99 else None,
        "cpu": usage,
    }


# -- frames -------------------------------------------------------------------------------


def _raw_frames(path: str, data: np.ndarray[Any, Any], options: dict[str, Any]) -> float:
    started = time.perf_counter()
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset(
            "frames",
            shape=(0, *FRAME_SHAPE),
            maxshape=(None, *FRAME_SHAPE),
            chunks=(1, *FRAME_SHAPE),
            dtype=data.dtype,
            **options,
        )
        for first in range(0, len(data), FRAME_BATCH):
            dataset.resize(first + FRAME_BATCH, axis=0)
            dataset[first : first + FRAME_BATCH] = data[first : first + FRAME_BATCH]
            handle.flush()
    return time.perf_counter() - started


def _our_frames(path: str, data: np.ndarray[Any, Any], options: dict[str, Any]) -> float:
    started = time.perf_counter()
    h5py.File(path, "w-", locking=False, libver=hdf5.FORMAT).close()
    handle = files.acquire(Path(path))
    appender = hdf5.create_growing(
        handle,
        "frames",
        point_shape=FRAME_SHAPE,
        maxshape=(None, *FRAME_SHAPE),
        chunks=(1, *FRAME_SHAPE),
        dtype=data.dtype,
        fillvalue=0,
        options=options,
    )
    per_call = max(1, WriterOptions().write_bytes // data[0].nbytes)  # the consumer's bundles
    for first in range(0, len(data), FRAME_BATCH):
        for start in range(first, first + FRAME_BATCH, per_call):
            appender.write_runs([(i, data[i : i + 1]) for i in range(start, start + per_call)])
        handle.flush()
    files.release(Path(path))
    return time.perf_counter() - started


def frames(directory: str) -> dict[str, Any]:
    """Medians of alternating rounds: raw h5py and our HDF5 stage, in seconds."""
    data = np.random.default_rng(0).poisson(50, (FRAMES, *FRAME_SHAPE)).astype("<u2")
    options = WriterOptions().compression.dataset_options()
    raw, ours = [], []
    for round_ in range(FRAME_ROUNDS):
        raw.append(_raw_frames(f"{directory}/raw_{round_}.h5", data, options))
        ours.append(_our_frames(f"{directory}/ours_{round_}.h5", data, options))
        for path in Path(directory).glob("*_*.h5"):
            path.unlink()
    return {
        "mbytes": data.nbytes / 1e6,
        "raw": statistics.median(raw),
        "ours": statistics.median(ours),
        "workers": compression_pool().workers,
    }


# -- memory -------------------------------------------------------------------------------


def rss(client: redis.Redis, url: str, directory: str, seconds: float) -> list[tuple[float, float]]:
    """(seconds, MiB) of this process's resident memory while one scan is written."""
    scan = _new_scan(client, "rss", f"{directory}/rss.h5", RSS_CHANNELS)
    go = _publisher(url, _streams(scan), ENTRY_POINTS, RATE, seconds)
    writer = NexusScanWriter(client, scan.key, WriterOptions(), mode=Mode.PARALLEL)
    writer.start()
    process = go()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    step = max(1.0, seconds / 60)
    while process.is_alive():
        samples.append((time.monotonic() - started, _rss_mib()))
        print(f"rss {samples[-1][0]:.0f} s: {samples[-1][1]:.1f} MiB", flush=True)
        _join(process, step)
    _close(scan, int(RATE * seconds))
    writer.join(600)
    samples.append((time.monotonic() - started, _rss_mib()))
    return samples


# -- report -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f} ms"


def measure(plan: dict[str, Any]) -> str:
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as directory:
        client = connect(server.url)
        # First: the memory of a process that has written nothing else.
        curve = (
            rss(client, server.url, directory, plan["rss_seconds"])
            if plan["rss_seconds"] > 0
            else [(0.0, 0.0)]
        )
        client.flushall()
        by_channels: dict[int, dict[str, Any]] = {}
        for n in plan["channels"]:
            by_channels[n] = {
                **live(client, server.url, directory, n, plan["live_seconds"]),
                **throughput(client, directory, n, plan["throughput_points"]),
            }
            client.flushall()
            for path in Path(directory).iterdir():
                path.unlink() if path.is_file() else None
            print(n, "channels:", by_channels[n], flush=True)
        by_scans: dict[int, dict[str, Any]] = {}
        for s in plan["scans"]:
            by_scans[s] = concurrent(client, server.url, directory, s, plan["scan_seconds"])
            client.flushall()
            print(s, "scans:", by_scans[s], flush=True)
        frame_case = frames(directory) if plan["frames"] else None
    ch = plan["channels"]
    targets = {1000: 0.050, 3000: 0.250}
    rows = [
        ["live latency p99 (oldest point)", *(_ms(by_channels[n]["p99"]) for n in ch)],
        ["writer process CPU", *(f"{by_channels[n]['cpu']:.0f} %" for n in ch)],
        [
            "throughput / raw XREAD of the same streams",
            *(f"{by_channels[n]['raw'] / by_channels[n]['ours']:.2f}x" for n in ch),
        ],
        ["creating the entry (first point after)", *(_ms(by_channels[n]["create"]) for n in ch)],
    ]
    checks = [
        (f"{n} channels: p99 < {t * 1e3:.0f} ms", by_channels[n]["p99"] or 99, t)
        for n, t in targets.items()
        if n in by_channels
    ]
    if 3000 in by_channels:
        c = by_channels[3000]
        checks.append(("3000 channels: entry creation < 300 ms", c["create"], 0.3))
        checks.append(("3000 channels: throughput >= 0.5x raw XREAD", 0.5, c["raw"] / c["ours"]))
    sc = plan["scans"]
    scan_rows = [
        ["latency p99 (oldest point), median of the scans", *(_ms(by_scans[s]["p99"]) for s in sc)],
        ["latency p99, the worst scan", *(_ms(by_scans[s]["worst"]) for s in sc)],
        ["writer process CPU", *(f"{by_scans[s]['cpu']:.0f} %" for s in sc)],
    ]
    if 200 in by_scans:
        checks.append(("200 scans: worst p99 < 100 ms", by_scans[200]["worst"] or 99, 0.1))
    frame_text = ""
    if frame_case is not None:
        mb, raw_s, ours_s = frame_case["mbytes"], frame_case["raw"], frame_case["ours"]
        frame_text = "\n\n" + markdown_table(
            [
                f"{FRAMES} one-MiB frames, bitshuffle-LZ4, from memory",
                "raw h5py (one thread)",
                f"the writer's HDF5 stage ({frame_case['workers']} compression threads)",
                "ours / raw",
            ],
            [["MB/s", f"{mb / raw_s:,.0f}", f"{mb / ours_s:,.0f}", f"{raw_s / ours_s:.2f}x"]],
        )
        checks.append(("frames: the HDF5 stage >= 1.5x raw h5py", 1.5, raw_s / ours_s))
    warm = [m for t, m in curve if t >= min(60.0, curve[-1][0] / 4)]
    growth = warm[-1] - warm[0] if len(warm) > 1 else 0.0
    span = curve[-1][0] - min(60.0, curve[-1][0] / 4)
    checks.append(
        (f"RSS growth after warm-up, {span:.0f} s (the target: an hour): < 20 MB", growth, 20.0)
    )
    points = ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in curve[:: max(1, len(curve) // 12)])
    check_rows = [[what, verdict(value < bound)] for what, value, bound in checks]
    return (
        f"live scans for {plan['live_seconds']:g} s, concurrent scans for "
        f"{plan['scan_seconds']:g} s, memory for {plan['rss_seconds']:g} s; embedded "
        "redis-server; publishers in a process of their own.\n\n"
        f"Channels per scan (float64 at {RATE} Hz, {ENTRY_POINTS} points per entry; throughput: "
        f"{plan['throughput_points']} points per channel published before the writer starts):\n\n"
        + markdown_table(["channels per scan", *(str(n) for n in ch)], rows)
        + f"\n\nConcurrent scans ({SCANS_CHANNELS} channels at {SCANS_RATE} Hz, "
        f"{SCANS_ENTRY} points per entry), one session writer:\n\n"
        + markdown_table(["concurrent scans", *(str(s) for s in sc)], scan_rows)
        + frame_text
        + f"\n\nResident memory (MiB) writing {RSS_CHANNELS} channels at {RATE} Hz: {points}; "
        f"growth after warm-up {growth:+.1f} MiB over {span:.0f} s.\n\n"
        + markdown_table(["target", "verdict"], check_rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    parser.add_argument("--full", action="store_true", help="longer runs, one hour of memory")
    parser.add_argument("--channels", type=int, nargs="*", help="only these channel counts")
    parser.add_argument("--scans", type=int, nargs="*", help="only these scan counts")
    parser.add_argument("--rss-seconds", type=float, help="seconds of the memory run")
    parser.add_argument("--no-frames", action="store_true", help="without the frames case")
    args = parser.parse_args()
    plan = dict(FULL if args.full else SHORT)
    for name in ("channels", "scans"):
        if getattr(args, name) is not None:
            plan[name] = getattr(args, name)
    if args.rss_seconds is not None:
        plan["rss_seconds"] = args.rss_seconds
    if args.no_frames:
        plan["frames"] = False
    body = f"Measured {time.strftime('%Y-%m-%d')} with `make bench`: " + measure(plan)
    print(body)
    if args.write:
        write_section(args.write, "bench_scale", body)
        print(f"\nwrote {args.write}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    threading.current_thread().name = "bench"
    main()

"""The CallbackScheduler against plain callbacks and one shared queue, in the same run.

Run with ``make bench`` (or ``python -m benchmarks.bench_scheduler [--write FILE]``).

* Overhead: N no-op events posted from one thread and run by the scheduler's worker,
  against N direct calls of the same callback (what a plain Tango callback costs); the
  difference per event, and both rates.
* A fast stream beside a slow one: a "consumer" thread (Tango's event consumer, as in seed
  000) receives a slow stream at 10 Hz whose callback takes 0.3 s and a fast stream at
  100 Hz whose callback does nothing, for a few seconds; the fast stream's latency (from
  its event's time to its callback's start) with plain callbacks (run by the consumer
  thread, first come first served), with one shared queue and worker, and with the
  CallbackScheduler (one worker).
* End to end with Tango: seed 002's scenario (``scripts/rogue_scenario.py``) on an embedded
  database, with plain and scheduled callbacks.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._report import markdown_table, percentile, report, verdict
from nexus_writer.tango import CallbackScheduler
from sync_primitives import Event

EVENTS = 200_000
SLOW_RATE, SLOW_CALLBACK = 10.0, 0.3
FAST_RATE = 100.0
DURATION = 6.0
OVERHEAD_TARGET = 20e-6
ROOT = Path(__file__).resolve().parent.parent


def overhead() -> tuple[float, float]:
    """Seconds per event: a direct call, and through the scheduler (post to callback end)."""
    count = [0]

    def callback(event: object) -> None:
        count[0] += 1

    started = time.perf_counter()
    for i in range(EVENTS):
        callback(i)
    direct = (time.perf_counter() - started) / EVENTS

    scheduler = CallbackScheduler(maxlen=EVENTS)
    done = Event()

    def last(event: object) -> None:
        callback(event)
        if count[0] == 2 * EVENTS:
            done.set()

    scheduler.register("s", last)
    try:
        started = time.perf_counter()
        for i in range(EVENTS):
            scheduler.post("s", i)
        if not done.wait(120):
            raise RuntimeError("the scheduler did not run every event")
        scheduled = (time.perf_counter() - started) / EVENTS
    finally:
        scheduler.shutdown()
    return direct, scheduled


def fast_beside_slow(kind: str) -> list[float]:
    """Latencies of the fast stream's events (seconds) for ``kind``: plain, shared or
    scheduler. An event whose callback had not started by the end of the run counts with
    its wait so far (a lower bound)."""
    sent: list[float] = []  # the fast events' times, by index
    latencies: dict[int, float] = {}

    def slow(event: tuple[int, float]) -> None:
        time.sleep(SLOW_CALLBACK)

    def fast(event: tuple[int, float]) -> None:
        latencies[event[0]] = time.time() - event[1]

    callbacks = {"slow": slow, "fast": fast}
    deliver: Callable[[str, tuple[int, float]], None]
    scheduler: CallbackScheduler | None = None
    shared: queue.Queue[tuple[str, tuple[int, float]] | None] = queue.Queue()
    if kind == "scheduler":
        scheduler = CallbackScheduler(workers=1, maxlen=10_000)
        for name, fn in callbacks.items():
            scheduler.register(name, fn)
        deliver = lambda name, event: scheduler.post(name, event, event[1])  # noqa: E731
    elif kind == "shared":

        def work() -> None:
            while (item := shared.get()) is not None:
                callbacks[item[0]](item[1])

        threading.Thread(target=work, daemon=True).start()
        deliver = lambda name, event: shared.put((name, event))  # noqa: E731
    else:
        deliver = lambda name, event: callbacks[name](event)  # noqa: E731

    # The network: events arrive on time in an inbox; the consumer thread takes them in
    # order and delivers each (running the callback itself, with plain callbacks).
    inbox: queue.Queue[tuple[str, tuple[int, float]] | None] = queue.Queue()

    def consume() -> None:
        while (item := inbox.get()) is not None:
            deliver(*item)

    threading.Thread(target=consume, daemon=True).start()
    started = time.monotonic()
    ticks = 0
    while (elapsed := time.monotonic() - started) < DURATION:
        now = time.time()
        sent.append(now)
        inbox.put(("fast", (ticks, now)))
        if ticks % round(FAST_RATE / SLOW_RATE) == 0:
            inbox.put(("slow", (-1, now)))
        ticks += 1
        time.sleep(max(0.0, ticks / FAST_RATE - elapsed))
    ended = time.time()
    inbox.put(None)
    shared.put(None)
    if scheduler is not None:
        scheduler.shutdown(timeout=SLOW_CALLBACK * 5)
    done = dict(latencies)
    return [done.get(i, ended - stamp) for i, stamp in enumerate(sent)]


def scenario() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        result = Path(directory) / "result.json"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "rogue_scenario.py"), "--json", str(result)],
            check=True,
            capture_output=True,
            timeout=300,
            cwd=ROOT,
        )
        outcome: dict[str, Any] = json.loads(result.read_text())
        return outcome


def measure() -> str:
    direct, scheduled = overhead()
    cost = scheduled - direct
    rows = []
    fast: dict[str, list[float]] = {}
    for kind in ("plain", "shared", "scheduler"):
        fast[kind] = fast_beside_slow(kind)
    for kind, label in (
        ("plain", "plain callbacks (one consumer thread, first come first served)"),
        ("shared", "one shared queue and one worker"),
        ("scheduler", "CallbackScheduler, one worker"),
    ):
        samples = fast[kind]
        rows.append(
            [
                label,
                f"{percentile(samples, 0.5) * 1e3:.1f} ms",
                f"{percentile(samples, 0.99) * 1e3:.0f} ms",
                f"{percentile(samples, 0.99) / percentile(fast['scheduler'], 0.99):.0f}x",
            ]
        )
    p99 = percentile(fast["scheduler"], 0.99)
    tango = scenario()
    plain, sched = tango["plain"], tango["scheduled"]
    return (
        f"{EVENTS:,} no-op events; a fast stream at {FAST_RATE:.0f} Hz beside a slow one at "
        f"{SLOW_RATE:.0f} Hz whose callback takes {SLOW_CALLBACK} s, for {DURATION:.0f} s "
        "each way.\n\n"
        + markdown_table(
            ["what", "figure", "target", ""],
            [
                ["direct call of a no-op callback", f"{direct * 1e6:.2f} us/event", "", ""],
                [
                    "through the scheduler (post, worker, callback)",
                    f"{scheduled * 1e6:.2f} us/event ({1 / scheduled / 1e3:.0f}k events/s, "
                    f"{direct / scheduled:.2f}x the direct rate)",
                    "",
                    "",
                ],
                [
                    "overhead per event",
                    f"{cost * 1e6:.2f} us",
                    "< 20 us",
                    verdict(cost < OVERHEAD_TARGET),
                ],
                [
                    "fast stream p99 with the scheduler",
                    f"{p99 * 1e3:.0f} ms",
                    f"< {SLOW_CALLBACK * 1e3:.0f} ms (one slow callback)",
                    verdict(p99 < SLOW_CALLBACK),
                ],
            ],
        )
        + "\n\nThe fast stream's latency:\n\n"
        + markdown_table(["callbacks run by", "p50", "p99", "p99 vs the scheduler"], rows)
        + "\n\nSeed 002's scenario through real device servers (scripts/rogue_scenario.py, "
        "Scan timeout 3 s, scan 1 s):\n\n"
        + markdown_table(
            ["callbacks", "Scan", "IDLE event latency", "slowest stream the monitor shows"],
            [
                [
                    "plain",
                    "completed" if plain["completed"] else f"failed: {plain['error']}",
                    "-" if plain.get("mode_latency") is None else f"{plain['mode_latency']:.3f} s",
                    f"{plain['slowest']['stream']} "
                    f"({plain['slowest']['processing_median'] * 1e3:.0f} ms)",
                ],
                [
                    "scheduled",
                    f"completed in {sched['call_seconds']:.2f} s"
                    if sched["completed"]
                    else f"failed: {sched['error']}",
                    "-" if sched.get("mode_latency") is None else f"{sched['mode_latency']:.3f} s",
                    f"{sched['slowest']['stream']} "
                    f"({sched['slowest']['processing_median'] * 1e3:.0f} ms)",
                ],
            ],
        )
    )


if __name__ == "__main__":
    report("scheduler", __doc__.split("\n\n")[0], measure)

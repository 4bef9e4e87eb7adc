"""Another process reads the file while the scan runs, and sees every value within 0.5 s,
for a 1 kHz channel and for a slow one alike (no waiting for chunks to fill)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.protocol import SessionPublisher
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.subscriber import Mode, State
from sync_primitives import AsyncResult
from tests.conftest import PROMPT
from tests.writer.helpers import started_scan

SCRIPT = Path(__file__).parent / "scripts" / "watch_file.py"
FAST_RATE, SLOW_RATE, SECONDS, BATCH = 1000, 5, 2.0, 5
MAX_LATENCY = 0.5


def test_values_are_readable_by_another_process_within_half_a_second(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    fast_total, slow_total = int(FAST_RATE * SECONDS), int(SLOW_RATE * SECONDS)
    path = tmp_path / "live.h5"
    scan = started_scan(
        SessionPublisher(redis_client, "live"),
        name="timescan",
        title="timescan 0.001",
        file=str(path),
        channels=[{"name": "fast", "dtype": "<f8"}, {"name": "slow", "dtype": "<f8"}],
    )
    writer = NexusScanWriter(redis_client, scan.key, mode=Mode.PARALLEL)
    writer.start()
    watcher = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            str(path),
            entry_name(scan.document.number),
            str(fast_total),
            str(slow_total),
            "30",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    published: AsyncResult[list[tuple[float, int, int]]] = AsyncResult()

    def publish() -> None:
        """Paced like a detector: a batch of 5 fast points every 5 ms, a slow point every
        200 ms; records when each count was reached."""
        sent, start, fast, slow = [], time.time(), 0, 0
        while fast < fast_total:
            time.sleep(max(0.0, start + (fast + BATCH) / FAST_RATE - time.time()))
            scan.send("fast", np.arange(fast, fast + BATCH, dtype="<f8"))
            fast += BATCH
            if slow < slow_total and fast / FAST_RATE >= (slow + 1) / SLOW_RATE:
                scan.send("slow", [float(slow)])
                slow += 1
            sent.append((time.time(), fast, slow))
        published.set(sent)

    threading.Thread(target=publish, daemon=True).start()
    sent = published.get(SECONDS * 10)  # yields: the writer's listener runs in this hub
    scan.close()
    assert writer.join(PROMPT * 4) and writer.state is State.OFF
    output, _ = watcher.communicate(timeout=60)
    seen = [
        (float(t), int(f), int(s))
        for t, f, s in (line.split() for line in output.split("\n") if line)
    ]
    assert seen and seen[-1][1:] == (fast_total, slow_total), seen[-3:]

    def visible_after(when: float, fast: int, slow: int) -> float:
        for moment, seen_fast, seen_slow in seen:
            if seen_fast >= fast and seen_slow >= slow:
                return max(0.0, moment - when)
        raise AssertionError(f"{fast} fast and {slow} slow points were never seen")

    latencies = [visible_after(when, fast, slow) for when, fast, slow in sent]
    assert max(latencies) < MAX_LATENCY, (
        f"p50 {np.percentile(latencies, 50):.3f} s, max {max(latencies):.3f} s"
    )

"""Speed of sync_primitives against baselines measured in the same run.

Run with ``make bench`` (or ``python -m benchmarks.bench_primitives [--write FILE]``). Every
figure is the median of several rounds in which ours and its baselines alternate, and every
verdict is a ratio between figures of this run: this machine is noisy, absolute numbers are
not comparable between runs.

Cases and targets (issue 2):

* queue: items/s from a plain thread to a greenlet in another thread's hub. Ours at least
  1.5x ``aiologic.SimpleQueue`` (same path) and 10x stdlib ``queue.Queue`` (thread to thread).
* wake: p50 of a wake-up round trip into another hub (plain thread sets an Event, a greenlet
  in another hub wakes and sets one back). Ours within 2x a raw thread-lock round trip.
* lock: uncontended ``with lock:``. Ours no slower than 1.5x ``gevent.lock.RLock`` (issue 7:
  the fair hand-over must not cost the uncontended path more than that).
* contended: four plain threads take one lock in a loop, each dropping the GIL while it
  holds it (as an h5py write does). Acquisitions/s of all four, and fairness: the fewest
  acquisitions of one contender divided by the most. Ours (FIFO hand-over) at least 0.5;
  ``threading.Lock`` and ``gevent.lock.RLock`` in the same run for comparison.
"""

from __future__ import annotations

import queue as stdlib_queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiologic
import gevent
import gevent.lock

import sync_primitives as sp
from benchmarks._report import markdown_table, percentile, report, verdict

ROUNDS = 5
QUEUE_ITEMS = 200_000
STDLIB_ITEMS = 50_000
WAKES = 2_000
LOCK_OPS = 200_000
CONTENDERS = 4
CONTENDED_SECONDS = 0.5


@dataclass(frozen=True)
class Row:
    case: str
    what: str
    figure: float
    unit: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


# -- queue throughput ---------------------------------------------------------------------


def _thread_to_hub(
    consumer: sp.Thread,
    make_get: Callable[[], Callable[[], Any]],
    put: Callable[[Any], None],
    items: int,
) -> float:
    """Items/s from a plain thread (put) to a greenlet in ``consumer``'s hub (get)."""

    def consume() -> float:
        get = make_get()
        for _ in range(items):
            get()
        return time.perf_counter()

    done = consumer.apply_async(consume)
    started = time.perf_counter()

    def produce() -> None:
        for i in range(items):
            put(i)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    return items / (done.get(60) - started)


def queue_ours(consumer: sp.Thread) -> float:
    queue: sp.Queue[int] = sp.Queue()
    return _thread_to_hub(consumer, lambda: queue.get, queue.put, QUEUE_ITEMS)


def queue_aiologic(consumer: sp.Thread) -> float:
    queue: aiologic.SimpleQueue[int] = aiologic.SimpleQueue()
    return _thread_to_hub(consumer, lambda: queue.green_get, queue.put, QUEUE_ITEMS)


def queue_stdlib() -> float:
    queue: stdlib_queue.Queue[int] = stdlib_queue.Queue()

    def consume() -> None:
        for _ in range(STDLIB_ITEMS):
            queue.get()

    consumer = threading.Thread(target=consume)
    started = time.perf_counter()
    consumer.start()
    for i in range(STDLIB_ITEMS):
        queue.put(i)
    consumer.join()
    return STDLIB_ITEMS / (time.perf_counter() - started)


# -- wake-up round trip -------------------------------------------------------------------


def round_trips(send: Callable[[], Any], receive: Callable[[], Any]) -> list[float]:
    """Seconds from each ``send()`` to the ``receive()`` of the answer."""
    samples = []
    for _ in range(WAKES):
        started = time.perf_counter()
        send()
        receive()
        samples.append(time.perf_counter() - started)
    return samples


def wake_ours(peer: sp.Thread) -> list[float]:
    """Round trips: this plain thread sets ``ping``; a greenlet in ``peer``'s hub answers."""
    ping, pong = sp.Event(), sp.Event()

    def answer() -> None:
        for _ in range(WAKES):
            ping.wait()
            ping.clear()
            pong.set()

    def receive() -> None:
        pong.wait()
        pong.clear()

    answering = peer.apply_async(answer)
    samples = round_trips(ping.set, receive)
    answering.get(60)
    return samples


def wake_raw_lock() -> list[float]:
    """The same round trip between two plain threads over raw locks."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def answer() -> None:
        for _ in range(WAKES):
            ping.acquire()
            pong.release()

    answering = threading.Thread(target=answer)
    answering.start()
    samples = round_trips(ping.release, pong.acquire)
    answering.join()
    return samples


# -- uncontended locks --------------------------------------------------------------------


def ns_per_with(lock: Any) -> float:
    started = time.perf_counter()
    for _ in range(LOCK_OPS):
        with lock:
            pass
    return (time.perf_counter() - started) / LOCK_OPS * 1e9


# -- contended locks ----------------------------------------------------------------------


def contended(lock: Any) -> tuple[float, float]:
    """Acquisitions/s of CONTENDERS plain threads sharing ``lock``, and min/max of theirs."""
    counts = [0] * CONTENDERS
    start = threading.Barrier(CONTENDERS + 1)
    stop = threading.Event()

    def contender(index: int) -> None:
        start.wait()
        taken = 0
        while not stop.is_set():
            with lock:
                time.sleep(0)  # drops the GIL while holding the lock
            taken += 1
        counts[index] = taken

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    time.sleep(CONTENDED_SECONDS)  # the length of the measurement
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, min(counts) / max(*counts, 1)


# -- report -------------------------------------------------------------------------------


def run() -> list[Row]:
    peer = sp.Thread(name="bench-peer")
    peer.start()
    try:
        ours_q, aio_q, std_q = [], [], []
        ours_wake, raw_wake = [], []
        for _ in range(ROUNDS):
            ours_q.append(queue_ours(peer))
            aio_q.append(queue_aiologic(peer))
            std_q.append(queue_stdlib())
            ours_wake.append(percentile(wake_ours(peer), 0.5))
            raw_wake.append(percentile(wake_raw_lock(), 0.5))
        last_ours, last_raw = wake_ours(peer), wake_raw_lock()
    finally:
        peer.stop(timeout=10)

    lock_figures: dict[str, list[float]] = {
        "sync_primitives.Lock": [],
        "sync_primitives.RLock": [],
        "gevent.lock.RLock": [],
        "threading.Lock": [],
    }
    makers: dict[str, Callable[[], Any]] = {
        "sync_primitives.Lock": sp.Lock,
        "sync_primitives.RLock": sp.RLock,
        "gevent.lock.RLock": gevent.lock.RLock,
        "threading.Lock": threading.Lock,
    }
    contended_figures: dict[str, list[tuple[float, float]]] = {
        "sync_primitives.Lock": [],
        "threading.Lock": [],
        "gevent.lock.RLock": [],
    }
    for _ in range(ROUNDS):
        for name, make in makers.items():
            lock_figures[name].append(ns_per_with(make()))
        for name, figures in contended_figures.items():
            figures.append(contended(makers[name]()))

    med = statistics.median
    q_ours, q_aio, q_std = med(ours_q), med(aio_q), med(std_q)
    w_ours, w_raw = med(ours_wake) * 1e6, med(raw_wake) * 1e6
    locks = {name: med(values) for name, values in lock_figures.items()}
    gevent_rlock = locks["gevent.lock.RLock"]

    rows = [
        Row(
            "queue",
            "sync_primitives.Queue, plain thread -> greenlet in another hub",
            q_ours,
            "items/s",
        ),
        Row(
            "queue",
            "aiologic.SimpleQueue, same path",
            q_aio,
            "items/s",
            f"ours {q_ours / q_aio:.2f}x",
            ">= 1.5x",
            verdict(q_ours >= 1.5 * q_aio),
        ),
        Row(
            "queue",
            "stdlib queue.Queue, thread -> thread",
            q_std,
            "items/s",
            f"ours {q_ours / q_std:.1f}x",
            ">= 10x",
            verdict(q_ours >= 10 * q_std),
        ),
        Row(
            "wake",
            "sync_primitives.Event round trip into another hub: p50 "
            f"(p99 {percentile(last_ours, 0.99) * 1e6:.0f} us)",
            w_ours,
            "us",
            f"ours {w_ours / w_raw:.2f}x",
            "<= 2x",
            verdict(w_ours <= 2 * w_raw),
        ),
        Row(
            "wake",
            "raw threading.Lock round trip between plain threads: p50 "
            f"(p99 {percentile(last_raw, 0.99) * 1e6:.0f} us)",
            w_raw,
            "us",
        ),
    ]
    for name in ("sync_primitives.Lock", "sync_primitives.RLock"):
        ratio = locks[name] / gevent_rlock
        rows.append(
            Row(
                "lock",
                f"{name}, uncontended with-block",
                locks[name],
                "ns",
                f"{ratio:.2f}x gevent",
                "<= 1.5x",
                verdict(ratio <= 1.5),
            )
        )
    rows.append(Row("lock", "gevent.lock.RLock, uncontended with-block", gevent_rlock, "ns"))
    rows.append(
        Row("lock", "threading.Lock, uncontended with-block", locks["threading.Lock"], "ns")
    )
    rates = {name: med(rate for rate, _ in runs) for name, runs in contended_figures.items()}
    fairness = {name: med(fair for _, fair in runs) for name, runs in contended_figures.items()}
    ours_rate, ours_fair = rates["sync_primitives.Lock"], fairness["sync_primitives.Lock"]
    rows.append(
        Row(
            "contended",
            f"sync_primitives.Lock, {CONTENDERS} plain threads: acquisitions "
            f"(fairness {ours_fair:.2f})",
            ours_rate,
            "/s",
            f"fairness {ours_fair:.2f}",
            ">= 0.5",
            verdict(ours_fair >= 0.5),
        )
    )
    for name in ("threading.Lock", "gevent.lock.RLock"):
        rows.append(
            Row(
                "contended",
                f"{name}, same: acquisitions (fairness {fairness[name]:.2f})",
                rates[name],
                "/s",
                f"ours {ours_rate / rates[name]:.2f}x",
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    cells = []
    for row in rows:
        figure = f"{row.figure:,.0f}" if row.figure >= 100 else f"{row.figure:.1f}"
        cells.append(
            [row.case, row.what, f"{figure} {row.unit}", row.ratio, row.target, row.verdict]
        )
    return markdown_table(["case", "what", "figure", "ratio", "target", "verdict"], cells)


def measure() -> str:
    rows = run()
    return (
        f"medians of {ROUNDS} alternating rounds, gevent {gevent.__version__}, "
        f"aiologic {aiologic.__version__}.\n\n{table(rows)}"
    )


if __name__ == "__main__":
    report("bench_primitives", __doc__.splitlines()[0], measure)

"""Many threads, hubs and greenlets at once: counts and ordering must come out exact."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_primitives import Event, Lock, Queue, RLock, Thread
from tests.conftest import PROMPT, in_plain_thread, yield_now

pytestmark = pytest.mark.stress

STOP = ("stop", -1)
_settings = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Crowd:
    """Runs callables in greenlets of several hub threads and in hub-less threads."""

    def __init__(self, hubs: int) -> None:
        self.threads = [Thread(name=f"stress-{i}") for i in range(hubs)]
        for thread in self.threads:
            thread.start(timeout=PROMPT)

    def run(self, jobs: list[tuple[str, int, Callable[[], Any]]]) -> list[Any]:
        """Run the jobs concurrently and return their results."""
        return [get() for get in self.start(jobs)]

    def start(self, jobs: list[tuple[str, int, Callable[[], Any]]]) -> list[Callable[[], Any]]:
        """Start each job (where, hub index, fn), where is "hub" or "plain"; return getters."""
        pending: list[Callable[[], Any]] = []
        for where, index, fn in jobs:
            if where == "hub":
                result = self.threads[index % len(self.threads)].apply_async(fn)
                pending.append(functools.partial(result.get, PROMPT * 6))
            else:
                future = in_plain_thread(fn)
                pending.append(functools.partial(future.result, PROMPT * 6))
        return pending

    def close(self) -> None:
        for thread in self.threads:
            thread.stop(timeout=PROMPT)


places = st.sampled_from(["hub", "plain"])


@_settings
@given(
    producers=st.lists(places, min_size=1, max_size=4),
    consumers=st.lists(places, min_size=1, max_size=4),
    items=st.integers(min_value=1, max_value=400),
    maxsize=st.sampled_from([0, 1, 7]),
)
def test_queue_delivers_every_item_once_in_producer_order(
    producers: list[str], consumers: list[str], items: int, maxsize: int
) -> None:
    queue: Queue[tuple[str, int]] = Queue(maxsize)
    crowd = Crowd(hubs=2)
    try:

        def produce(pid: int) -> None:
            for seq in range(items):
                queue.put((f"p{pid}", seq), timeout=PROMPT)

        def consume() -> list[tuple[str, int]]:
            got = []
            while (item := queue.get(timeout=PROMPT)) != STOP:
                got.append(item)
            return got

        consuming = crowd.start([(where, i, consume) for i, where in enumerate(consumers)])
        crowd.run([(where, i, functools.partial(produce, i)) for i, where in enumerate(producers)])
        for _ in consumers:
            queue.put(STOP, timeout=PROMPT)
        received = [get() for get in consuming]
    finally:
        crowd.close()
    everything = sorted(item for got in received for item in got)
    assert everything == sorted((f"p{p}", s) for p in range(len(producers)) for s in range(items))
    for got in received:  # FIFO: one consumer sees each producer's items in order
        for pid in range(len(producers)):
            seqs = [seq for name, seq in got if name == f"p{pid}"]
            assert seqs == sorted(seqs)
    assert queue.statistics().getters_waiting == queue.statistics().putters_waiting == 0


@_settings
@given(
    workers=st.lists(places, min_size=2, max_size=6),
    greenlets=st.integers(min_value=1, max_value=6),
    rounds=st.integers(min_value=1, max_value=60),
    reentrant=st.booleans(),
)
def test_lock_excludes_across_hubs_greenlets_and_plain_threads(
    workers: list[str], greenlets: int, rounds: int, reentrant: bool
) -> None:
    lock = RLock() if reentrant else Lock()
    state = {"counter": 0, "inside": 0, "max_inside": 0}

    def critical() -> None:
        state["inside"] += 1
        state["max_inside"] = max(state["max_inside"], state["inside"])
        value = state["counter"]
        yield_now()
        state["counter"] = value + 1
        state["inside"] -= 1

    def loop() -> None:
        for _ in range(rounds):
            with lock:
                if reentrant:
                    with lock:
                        critical()
                else:
                    critical()

    def hub_worker() -> None:
        gevent.joinall([gevent.spawn(loop) for _ in range(greenlets)], raise_error=True)

    crowd = Crowd(hubs=3)
    try:
        crowd.run([(w, i, hub_worker if w == "hub" else loop) for i, w in enumerate(workers)])
    finally:
        crowd.close()
    expected = sum(greenlets * rounds if w == "hub" else rounds for w in workers)
    assert state["counter"] == expected
    assert state["max_inside"] == 1
    assert not lock.locked()


@_settings
@given(first=places, second=places, exchanges=st.integers(min_value=1, max_value=300))
def test_event_ping_pong_loses_no_wakeup(first: str, second: str, exchanges: int) -> None:
    ping, pong = Event(), Event()
    counts = {"ping": 0, "pong": 0}

    def player(mine: Event, theirs: Event, name: str, serve: bool) -> None:
        if serve:
            theirs.set()
        for _ in range(exchanges):
            assert mine.wait(PROMPT), f"{name} lost a wake-up"
            mine.clear()
            counts[name] += 1
            theirs.set()

    crowd = Crowd(hubs=2)
    try:
        crowd.run(
            [
                (first, 0, lambda: player(ping, pong, "ping", serve=False)),
                (second, 1, lambda: player(pong, ping, "pong", serve=True)),
            ]
        )
    finally:
        crowd.close()
    assert counts == {"ping": exchanges, "pong": exchanges}


def test_launchers_hammered_from_many_threads_return_every_result() -> None:
    crowd = Crowd(hubs=3)
    try:
        target = crowd.threads[0]

        def caller(offset: int) -> list[int]:
            return [target.apply(lambda x: x * 2, offset + i) for i in range(200)]

        results = crowd.run(
            [
                ("hub", 1, lambda: caller(0)),
                ("hub", 2, lambda: caller(1000)),
                ("plain", 0, lambda: caller(2000)),
                ("plain", 0, lambda: caller(3000)),
            ]
        )
    finally:
        crowd.close()
    for offset, got in zip((0, 1000, 2000, 3000), results, strict=True):
        assert got == [2 * (offset + i) for i in range(200)]

"""Chaos: threads with and without hubs start, wait and end at random while others put, get,
acquire and release. Every item is accounted for and no waiter is left behind.

Each seed draws a plan (who runs where, doing what, how often, with which time-outs, and
when the short-lived threads end); the threads then run it as the scheduler pleases, so a
failure is reproduced by running its seed again, often more than once:
``CHAOS_SEEDS=500 pytest tests/sync_primitives/test_chaos.py`` runs more seeds, and
``CHAOS_SEED=N`` only seed N.

The actors:

* plain: a hub-less OS thread, with time-outs;
* hub: greenlets of a :class:`~sync_primitives.Thread`, with time-outs, finishing normally;
* doomed: greenlets of a plain OS thread that runs a hub and *ends* after a random while,
  leaving its greenlets asleep where they are (wake-up cases 2, 3 and 4 of ``_waiter``);
* stopped: greenlets of a :class:`~sync_primitives.Thread` that is stopped after a random
  while, which kills them wherever they wait (case 1).

Doomed and stopped greenlets wait without time-out: they leave only by the end of their
thread. Nobody waits or yields while holding the lock where it could be ended there.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import Empty, Full
from typing import Any

import gevent
import pytest

from sync_primitives import Lock, Queue, RLock, Thread
from tests.conftest import PROMPT, in_plain_thread, wait_until, yield_now

pytestmark = pytest.mark.stress

_SEEDS = (
    [int(os.environ["CHAOS_SEED"])]
    if "CHAOS_SEED" in os.environ
    else list(range(int(os.environ.get("CHAOS_SEEDS", "16"))))
)


@dataclass
class Ledger:
    """What actually happened; list.append and itertools.count are atomic under the GIL."""

    produced: list[int] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    acquisitions: list[int] = field(default_factory=list)
    counter: int = 0
    ids: itertools.count[int] = field(default_factory=itertools.count)


class World:
    """The shared primitives and the actions actors take on them."""

    def __init__(self, rng: random.Random) -> None:
        self.items: Queue[int] = Queue(rng.choice([0, 1, 3]))
        self.lock: Lock = rng.choice([Lock, RLock])()
        self.ledger = Ledger()

    def put(self, timeout: float | None) -> None:
        item = next(self.ledger.ids)
        try:
            self.items.put(item, timeout=timeout)
        except Full:
            return
        self.ledger.produced.append(item)

    def get(self, timeout: float | None) -> None:
        try:
            item = self.items.get(timeout=timeout)
        except Empty:
            return
        self.ledger.consumed.append(item)

    def locked_increment(self, timeout: float | None, yield_inside: bool) -> None:
        if not self.lock.acquire(timeout=timeout):
            return
        try:
            value = self.ledger.counter
            if yield_inside:
                yield_now()  # a broken lock would show as a lost update
            self.ledger.counter = value + 1
            self.ledger.acquisitions.append(1)
        finally:
            self.lock.release()


def _script(world: World, rng: random.Random, timeouts: bool) -> Callable[[], None]:
    """A random sequence of actions for one actor."""
    steps: list[tuple[str, float | None]] = [
        (rng.choice(["put", "get", "lock"]), rng.uniform(0.0, 0.03) if timeouts else None)
        for _ in range(rng.randint(1, 25))
    ]

    def run() -> None:
        for action, timeout in steps:
            if action == "put":
                world.put(timeout)
            elif action == "get":
                world.get(timeout)
            else:
                world.locked_increment(timeout, yield_inside=timeouts)

    return run


def _doomed_thread(scripts: list[Callable[[], None]], lifetime: float) -> threading.Thread:
    """A plain OS thread that runs a hub and ends after ``lifetime``, greenlets or not."""

    def body() -> None:
        for script in scripts:
            gevent.spawn(script)
        gevent.sleep(lifetime)

    thread = threading.Thread(target=body, name="doomed", daemon=True)
    thread.start()
    return thread


class Cast:
    """The actors of one plan, and how to see each of them out."""

    def __init__(self, world: World, rng: random.Random, hubs: list[Thread]) -> None:
        self.world, self.rng, self.hubs = world, rng, hubs
        self.finishing: list[Callable[[], Any]] = []
        self.doomed: list[threading.Thread] = []
        self.stopped: list[tuple[Thread, float]] = []

    def add(self, kind: str) -> None:
        world, rng = self.world, self.rng
        if kind == "plain":
            future: Future[None] = in_plain_thread(_script(world, rng, timeouts=True))
            self.finishing.append(functools.partial(future.result, PROMPT * 4))
        elif kind == "hub":
            hub = rng.choice(self.hubs)
            for _ in range(rng.randint(1, 3)):
                result = hub.apply_async(_script(world, rng, timeouts=True))
                self.finishing.append(functools.partial(result.get, PROMPT * 4))
        elif kind == "doomed":
            scripts = [_script(world, rng, timeouts=False) for _ in range(rng.randint(1, 4))]
            self.doomed.append(_doomed_thread(scripts, rng.uniform(0.0, 0.02)))
        else:
            thread = Thread(name="chaos-stopped")
            thread.start(timeout=PROMPT)
            for _ in range(rng.randint(1, 4)):
                thread.spawn(_script(world, rng, timeouts=False))
            self.stopped.append((thread, rng.uniform(0.0, 0.02)))

    def see_out(self) -> None:
        for thread, lifetime in self.stopped:
            gevent.sleep(lifetime)  # the random life of the actor, not a wait for an outcome
            thread.stop(timeout=PROMPT)
        for finish in self.finishing:
            finish()
        for doomed in self.doomed:
            doomed.join(PROMPT)
            assert not doomed.is_alive()


def _run_plan(seed: int) -> World:
    rng = random.Random(seed)
    world = World(rng)
    hubs = [Thread(name=f"chaos-hub-{i}") for i in range(2)]
    for hub in hubs:
        hub.start(timeout=PROMPT)
    try:
        cast = Cast(world, rng, hubs)
        for _ in range(rng.randint(6, 14)):
            cast.add(rng.choice(["plain", "hub", "doomed", "stopped"]))
        cast.see_out()
    finally:
        for hub in hubs:
            hub.stop(timeout=PROMPT)
    return world


@pytest.mark.parametrize("seed", _SEEDS)
def test_chaos_every_item_accounted_for_and_no_waiter_left(seed: int) -> None:
    world = _run_plan(seed)
    ledger = world.ledger
    left: list[int] = []
    while True:
        try:
            left.append(world.items.get_nowait())
        except Empty:
            break
    assert sorted(ledger.consumed + left) == sorted(ledger.produced), "an item was lost or doubled"
    assert len(set(ledger.consumed)) == len(ledger.consumed)
    assert ledger.counter == len(ledger.acquisitions), "the lock let two in at once"
    # Every thread that could wait has ended or finished: nobody may be left waiting.
    wait_until(lambda: world.lock.statistics().waiting == 0, "no waiter is left on the lock")
    stats = world.items.statistics()
    assert (stats.getters_waiting, stats.putters_waiting) == (0, 0)
    assert not world.lock.locked(), "the lock was lost with a dead waiter"

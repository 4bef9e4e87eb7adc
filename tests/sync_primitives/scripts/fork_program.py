"""Fork a process whose primitives are in use by several threads; check both sides.

Run by tests/sync_primitives/test_fork.py in a subprocess, so that the fork happens in a
process of known threads. Prints one JSON object mapping each side of each scenario
("child", "parent", "interrupted", "hammered") to its checks, each mapping a check's name
to "ok" or to what went wrong, and exits 0.

* child / parent: threads asleep in and holding the primitives at the fork.
* interrupted: the fork falls in the middle of another thread's set(), put() or acquire(),
  recreated exactly by doing the first half of what those do, from another thread.
* ordered: waiters of the forking thread keep their turns through the fork.
* hammered: forks again and again while another thread loops over the primitives.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent

import sync_primitives as sp

TIMEOUT = 10.0


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        gevent.sleep(0.001)


def checks(named: dict[str, Callable[[], None]]) -> dict[str, str]:
    results = {}
    for name, check in named.items():
        try:
            check()
            results[name] = "ok"
        except BaseException:
            results[name] = traceback.format_exc(limit=4)
    return results


def fork_and_check(named: dict[str, Callable[[], None]]) -> dict[str, str]:
    """Fork; run the checks in the child; return the child's report in the parent."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, json.dumps(checks(named)).encode())
        os._exit(0)
    os.close(write_end)
    return _read_child(read_end, pid)


def main() -> None:
    report = inherited()
    report["interrupted"] = interrupted()
    report["ordered"] = ordered()
    report["hammered"] = hammered()
    print(json.dumps(report))


def interrupted() -> dict[str, str]:
    """Another thread is half-way through waking a survivor, or through taking a lock."""
    event, popped, unsent = sp.Event(), sp.Event(), sp.Event()
    items: sp.Queue[int] = sp.Queue()
    lock = sp.Lock()
    sleepers = {
        "event": gevent.spawn(event.wait),
        "popped": gevent.spawn(popped.wait),
        "unsent": gevent.spawn(unsent.wait),
        "items": gevent.spawn(items.get),
    }
    wait_until(
        lambda: (
            all(e.statistics().waiting == 1 for e in (event, popped, unsent))
            and items.statistics().getters_waiting == 1
        )
    )
    halfway, gate = threading.Event(), threading.Event()
    port = sp._hub.current_port()

    def first_halves() -> None:
        with event._mutex:  # set(): the flag is up, the waiters not woken yet
            event._flag = True
            event._generation += 1
        with popped._mutex:  # set(): the waiter is popped, its wake-up not posted yet
            popped._flag = True
            popped._generation += 1
            popped._waiters.popleft()
        with unsent._mutex, port._lock:  # post(): queued, the loop not told yet
            unsent._flag = True
            unsent._generation += 1
            port._items.append(unsent._waiters.popleft())  # type: ignore[arg-type]
        items._items.append(1)  # put(): appended, the getter not looked for yet
        lock._lock.acquire()  # acquire(): taken, the owner not recorded yet
        halfway.set()
        gate.wait()

    threading.Thread(target=first_halves, daemon=True).start()
    assert halfway.wait(TIMEOUT)
    try:
        return fork_and_check(
            {
                f"a greenlet asleep in {name} wakes": lambda g=sleeper: _woken(g)
                for name, sleeper in sleepers.items()
            }
            | {"a lock taken by a vanished thread is free": lambda: _free(lock)}
        )
    finally:
        gate.set()


def ordered() -> dict[str, str]:
    """Greenlets of the forking thread queue on a lock, a queue and a full queue."""
    lock, items, full = sp.Lock(), sp.Queue[int](), sp.Queue[int](maxsize=1)
    lock.acquire()
    full.put(-1)
    turns: dict[str, list[int]] = {"lock": [], "get": [], "put": []}

    def take_lock(i: int) -> None:
        with lock:
            turns["lock"].append(i)

    def get(i: int) -> None:
        items.get()
        turns["get"].append(i)

    def put(i: int) -> None:
        full.put(i)
        turns["put"].append(i)

    def queued(n: int) -> bool:
        waiting = (
            lock.statistics().waiting,
            items.statistics().getters_waiting,
            full.statistics().putters_waiting,
        )
        return waiting == (n, n, n)

    greenlets = []
    for i in range(8):
        for fn in (take_lock, get, put):
            greenlets.append(gevent.spawn(fn, i))
        wait_until(functools.partial(queued, i + 1))  # before the next: the order is known

    def serve() -> None:
        lock.release()
        for i in range(8):
            items.put(i)
            full.get()
        gevent.joinall(greenlets, timeout=TIMEOUT)
        _equal(turns, {k: list(range(8)) for k in turns})

    return fork_and_check({"each waiter keeps its turn": serve})


def hammered() -> dict[str, str]:
    """Twenty forks while another thread sets, puts and takes the lock in a loop."""
    event, lock, items = sp.Event(), sp.Lock(), sp.Queue[int]()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with lock:
                items.put(1)
            event.set()
            event.clear()
            with contextlib.suppress(sp.Empty):
                items.get_nowait()

    def settled(waiter: gevent.Greenlet, getter: gevent.Greenlet) -> bool:
        return (waiter.dead or event.statistics().waiting == 1) and (
            getter.dead or items.statistics().getters_waiting == 1
        )

    threading.Thread(target=hammer, daemon=True).start()
    outcomes: dict[str, str] = {}
    try:
        for attempt in range(20):
            waiter = gevent.spawn(event.wait)
            getter = gevent.spawn(items.get)
            # asleep at the fork, or already served by the hammer
            wait_until(functools.partial(settled, waiter, getter))
            report = fork_and_check(
                {
                    "the lock is free or freed": lambda: _free(lock),
                    "a greenlet waiting on the event wakes": functools.partial(
                        _woken_by, waiter, event.set
                    ),
                    "a greenlet waiting on the queue gets an item": functools.partial(
                        _woken_by, getter, functools.partial(items.put, 2)
                    ),
                }
            )
            outcomes |= {f"fork {attempt}: {k}": v for k, v in report.items() if v != "ok"}
            event.set()
            items.put(3)
            waiter.get(timeout=TIMEOUT)
            getter.get(timeout=TIMEOUT)
    finally:
        stop.set()
    return outcomes or {"every fork": "ok"}


def inherited() -> dict[str, dict[str, str]]:
    # -- the parent's state at the instant of the fork -------------------------------------
    items: sp.Queue[int] = sp.Queue()
    lock = sp.Lock()
    mine = sp.RLock()
    event = sp.Event()
    busy: sp.Queue[int] = sp.Queue()  # its mutex is held by another thread at the fork
    result: sp.AsyncResult[int] = sp.AsyncResult()  # likewise, and waited on
    unwaited: sp.AsyncResult[int] = sp.AsyncResult()  # likewise, never waited on
    resources = sp.ThreadResource(threading.get_ident)
    gate = threading.Event()  # holds the plain threads until the parent is done

    plain_got: list[int] = []
    holder_ready = threading.Event()

    def plain() -> None:  # a hub-less thread: holds lock, sleeps natively in get/wait
        resources.get()
        lock.acquire()
        holder_ready.set()
        plain_got.append(items.get())
        gate.wait()

    # Greenlets of the forking thread's hub, asleep in primitives whose mutex another thread
    # holds at the fork: they survive, and take that very mutex when they wake.
    here_busy = gevent.spawn(busy.get)
    here_result = gevent.spawn(result.get)  # no time-out: the parent holds the mutex
    wait_until(lambda: busy.statistics().getters_waiting == 1 and result.statistics().waiting == 1)

    def in_critical_section() -> None:  # as if interrupted inside set() or put()
        busy._mutex.acquire()
        result._mutex.acquire()
        unwaited._mutex.acquire()
        holder_ready.set()
        gate.wait()

    threading.Thread(target=plain, daemon=True).start()
    assert holder_ready.wait(TIMEOUT)
    holder_ready.clear()
    threading.Thread(target=in_critical_section, daemon=True).start()
    assert holder_ready.wait(TIMEOUT)

    blocker = sp.Event()
    worker = sp.Thread(target=blocker.wait, name="worker")
    worker.start(timeout=TIMEOUT)
    worker.spawn(items.get)  # greenlets of another thread's hub, asleep
    worker.spawn(event.wait)
    worker_got = worker.apply_async(lock.acquire)

    here = gevent.spawn(items.get)  # a greenlet of the forking thread's hub: survives
    mine.acquire()
    resources.get()
    wait_until(
        lambda: (
            items.statistics().getters_waiting == 3
            and lock.statistics().waiting == 1
            and event.statistics().waiting == 1
        )
    )

    child_report = fork_and_check(
        {
            "only the forking thread's waiters remain": lambda: _equal(
                (
                    items.statistics().getters_waiting,
                    lock.statistics().waiting,
                    event.statistics().waiting,
                ),
                (1, 0, 0),
            ),
            "a surviving greenlet gets an item": lambda: _gets(items, here),
            "a lock held by a vanished thread is free": lambda: _free(lock),
            "a lock held by the forking greenlet stays held": lambda: _still_mine(mine),
            "an event is set and waited on": lambda: _event_works(event),
            "a mutex held at the fork is renewed": lambda: _queue_works(busy, here_busy),
            "an AsyncResult's held mutex is renewed": lambda: _result_works(result, here_result),
            "an unwaited AsyncResult's held mutex is renewed": lambda: _result_works(
                unwaited, None
            ),
            "other threads' resources are dropped": lambda: _equal(
                list(resources), [threading.get_ident()]
            ),
            "a Thread of the parent has ended": lambda: _ended(worker),
            "work that thread had started fails": lambda: _fails_closed(worker_got),
            "a new Thread runs": lambda: _new_thread_works(items),
        }
    )
    # -- the parent: the child must not have disturbed anything -----------------------------
    parent = checks(
        {
            "parent's waiters are all still there": lambda: _equal(
                (items.statistics().getters_waiting, lock.statistics().waiting), (3, 1)
            ),
            "every parent waiter is woken": lambda: _parent_wakes(
                items=items,
                event=event,
                here=here,
                plain_got=plain_got,
                worker_got=worker_got,
            ),
        }
    )
    gate.set()
    busy._mutex.release()
    result._mutex.release()
    unwaited._mutex.release()
    blocker.set()
    worker.stop(timeout=TIMEOUT)
    return {"child": child_report, "parent": parent}


def _woken(greenlet: gevent.Greenlet) -> None:
    greenlet.join(timeout=TIMEOUT)
    assert greenlet.ready(), "still asleep"


def _woken_by(greenlet: gevent.Greenlet, wake: Callable[[], None]) -> None:
    wake()
    _woken(greenlet)


def _fails_closed(result: sp.AsyncResult[Any]) -> None:
    try:
        result.get(TIMEOUT)
    except sp.ClosedError:
        return
    raise AssertionError("no ClosedError")


def _equal(got: Any, expected: Any) -> None:
    assert got == expected, f"{got!r} != {expected!r}"


def _gets(items: sp.Queue[int], here: gevent.Greenlet) -> None:
    items.put(41)
    _equal(here.get(timeout=TIMEOUT), 41)
    items.put(42)
    _equal(items.get(timeout=TIMEOUT), 42)
    _equal(items.statistics().getters_waiting, 0)


def _free(lock: sp.Lock) -> None:
    assert lock.acquire(timeout=TIMEOUT)
    lock.release()
    assert not lock.locked()


def _still_mine(mine: sp.RLock) -> None:
    _equal(mine.statistics().depth, 1)
    mine.release()
    assert not mine.locked()


def _event_works(event: sp.Event) -> None:
    waiter = gevent.spawn(event.wait, TIMEOUT)
    wait_until(lambda: event.statistics().waiting == 1)
    event.set()
    assert waiter.get(timeout=TIMEOUT) is True


def _queue_works(busy: sp.Queue[int], here: gevent.Greenlet) -> None:
    busy.put(6)
    _equal(here.get(timeout=TIMEOUT), 6)
    getter = gevent.spawn(busy.get, timeout=TIMEOUT)
    wait_until(lambda: busy.statistics().getters_waiting == 1)
    busy.put(7)
    _equal(getter.get(timeout=TIMEOUT), 7)


def _result_works(result: sp.AsyncResult[int], here: gevent.Greenlet | None) -> None:
    result.set(3)
    _equal(result.get(TIMEOUT), 3)
    if here is not None:
        _equal(here.get(timeout=TIMEOUT), 3)


def _ended(worker: sp.Thread) -> None:
    assert not worker.is_alive()
    worker.join(TIMEOUT)
    try:
        worker.get(TIMEOUT)
    except sp.ThreadStoppedError:
        pass
    else:
        raise AssertionError("get() did not raise ThreadStoppedError")
    try:
        worker.apply(print, "never")
    except sp.ClosedError:
        return
    raise AssertionError("apply() did not raise ClosedError")


def _new_thread_works(items: sp.Queue[int]) -> None:
    thread = sp.Thread(name="child-thread")
    thread.start(timeout=TIMEOUT)
    got = thread.apply_async(items.get, timeout=TIMEOUT)
    items.put(5)
    _equal(got.get(TIMEOUT), 5)
    thread.stop(timeout=TIMEOUT)


def _parent_wakes(
    *,
    items: sp.Queue[int],
    event: sp.Event,
    here: gevent.Greenlet,
    plain_got: list[int],
    worker_got: sp.AsyncResult[bool],
) -> None:
    for value in (1, 2, 3):
        items.put(value)
    _equal(here.get(timeout=TIMEOUT) in (1, 2, 3), True)
    wait_until(lambda: items.statistics().getters_waiting == 0 and len(plain_got) == 1)
    event.set()
    wait_until(lambda: event.statistics().waiting == 0)
    assert not worker_got.ready()  # the plain thread still holds the lock


def _read_child(read_end: int, pid: int) -> dict[str, str]:
    ready, _, _ = select.select([read_end], [], [], TIMEOUT)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"the child answered": "no answer within the time-out: it hung"}
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    report: dict[str, str] = json.loads(data) if data else {}
    report["the child exited cleanly"] = "ok" if status == 0 else f"status {status}"
    return report


if __name__ == "__main__":
    main()
    sys.stdout.flush()

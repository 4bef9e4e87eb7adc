"""A gevent program that monkey-patches, then uses every primitive; run by test_monkey_patched.

Usage: python patched_program.py {before|after}: patch before or after importing
sync_primitives. Prints one line per check and "ALL OK" at the end; exits non-zero on failure.
"""

from __future__ import annotations

import sys

if sys.argv[1] == "before":
    from gevent import monkey

    monkey.patch_all()
    import sync_primitives as sp
else:
    from gevent import monkey

    import sync_primitives as sp

    monkey.patch_all()

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent

native_start = monkey.get_original("_thread", "start_new_thread")
native_ident = monkey.get_original("_thread", "get_ident")
TIMEOUT = 5.0
T = TypeVar("T")


def in_native_thread(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """Run fn in a real OS thread without a hub; return a getter of its outcome.

    The getter waits with an AsyncResult, so the main hub keeps running meanwhile.
    """
    outcome: sp.AsyncResult[T] = sp.AsyncResult()

    def body() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            outcome.set(exc)
        else:
            outcome.set(value)

    native_start(body, ())
    return lambda: outcome.get(TIMEOUT)


def check(name: str, condition: bool) -> None:
    print(f"{name}: {'ok' if condition else 'FAILED'}", flush=True)
    if not condition:
        sys.exit(1)


# Thread is a real OS thread even though threading.Thread is now a greenlet.
worker = sp.Thread(name="worker")
worker.start(timeout=TIMEOUT)
check("thread is an OS thread", worker.apply(native_ident) != native_ident())

# Queue: native thread -> greenlet of the worker's hub, and patched "threads" (greenlets).
queue: sp.Queue[int] = sp.Queue()
received = worker.apply_async(lambda: [queue.get(timeout=TIMEOUT) for _ in range(200)])


def put_range(start: int, count: int) -> None:
    for i in range(start, start + count):
        queue.put(i)


native_put = in_native_thread(put_range, 0, 100)
green_threads = [threading.Thread(target=put_range, args=(start, 50)) for start in (100, 150)]
for t in green_threads:
    t.start()
native_put()
for t in green_threads:
    t.join()
check("queue across hubs and native threads", sorted(received.get(TIMEOUT)) == list(range(200)))

# Event waited on by the main hub, the worker's hub and a native thread.
event = sp.Event()
waits = [gevent.spawn(event.wait, TIMEOUT), worker.apply_async(event.wait, TIMEOUT)]
native_wait = in_native_thread(event.wait, TIMEOUT)
while event.statistics().waiting < 3:
    gevent.idle()
event.set()
check("event in three places", waits[0].get() and waits[1].get(TIMEOUT) and native_wait())

# Lock held by a main-hub greenlet, wanted by a native thread and a worker greenlet.
lock = sp.Lock()
lock.acquire()


def acquire_and_release() -> bool:
    if not lock.acquire(timeout=TIMEOUT):
        return False
    lock.release()
    return True


native_acquire = in_native_thread(acquire_and_release)
worker_acquire = worker.apply_async(acquire_and_release)
while lock.statistics().waiting < 2:
    gevent.idle()
lock.release()
check("lock handed across", native_acquire() and worker_acquire.get(TIMEOUT))

# AsyncResult: a lone greenlet in the worker's hub, set by a patched "thread".
result: sp.AsyncResult[str] = sp.AsyncResult()
lone = worker.apply_async(result.get)
setter = threading.Thread(target=result.set, args=("value",))
setter.start()
setter.join()
check("async result", lone.get(TIMEOUT) == "value")

# HubTrigger and Launcher of the main thread, used from a native thread.
fired = sp.Event()
trigger = sp.HubTrigger(fired.set)
launcher = sp.Launcher()


def send_then_apply() -> int:
    trigger.send()
    ident: int = launcher.apply(native_ident)
    return ident


native_calls = in_native_thread(send_then_apply)
check("launcher runs in main thread", native_calls() == native_ident())
check("trigger runs", fired.wait(TIMEOUT))

# ThreadResource: per OS thread, shared by the patched "threads" (greenlets) of one thread.
resource = sp.ThreadResource(object)
mine = resource.get()
green: list[object] = []
t = threading.Thread(target=lambda: green.append(resource.get()))
t.start()
t.join()
check("thread resource per OS thread", green == [mine] and worker.apply(resource.get) is not mine)

# Blocking in a greenlet yields to the hub: a timed get lets other greenlets run.
ticks: list[int] = []


def tick() -> None:
    for i in range(20):
        ticks.append(i)
        gevent.sleep(0.001)


ticker = gevent.spawn(tick)
started = time.monotonic()
with contextlib.suppress(sp.Empty):
    sp.Queue().get(timeout=0.2)
check("timeout honoured while hub runs", 0.19 <= time.monotonic() - started < 2)
ticker.join()
check("other greenlets ran", ticks == list(range(20)))

worker.stop(timeout=TIMEOUT)
try:
    worker.apply(int)
    check("work to ended thread fails", False)
except sp.ClosedError:
    check("work to ended thread fails", True)
print("ALL OK")

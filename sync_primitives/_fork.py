"""After ``os.fork()``: the primitives a child process inherits work in the child.

.. important::
   :func:`track` may be called from any thread. The repair runs in the child process only,
   in the thread that called ``fork()`` (the only thread the child has), before
   ``os.fork()`` returns there (``os.register_at_fork``).

A child process starts with one thread, a copy of the forking one. Everything else the
parent's threads owned is inherited as it was at the instant of the fork, which may fall
in the middle of anything another thread was doing: a primitive's mutex may be held, a
lock taken but its owner not yet recorded, an ``Event.set()`` half-way through waking its
waiters, a wake-up popped from a deque but not yet posted, or posted to a port without the
loop being told. The deques hold waiters of threads that do not exist, the ports of the
other threads' hubs still accept work, and :class:`~sync_primitives.Thread` objects still
say they run. In the child, the repair runs in stages, each over every tracked object:

1. ``RENEW``: every primitive and port unlocks its mutex in place (as gevent does for its
   own locks), and the waiters of threads that did not survive are dropped from every
   deque.
2. ``CLOSE``: the ports of the threads that did not survive are closed, so that work sent
   there fails with ``ClosedError``, work queued there is abandoned, and a wake-up queued
   there passes on to a live waiter (a lock being handed to a dead waiter goes to the next).
3. If the forking thread runs a hub, its loop is re-initialised (``gevent.hub.reinit``,
   idempotent: ``gevent.os.fork`` calls it too), so that the child does not share the
   parent's wake-up pipe.
4. ``RESUME``: whatever was half done is finished by making everyone look again. The
   forking thread's port wakes every greenlet parked in it: each re-checks its condition
   (a spurious wake-up, which every waiter tolerates) and sleeps again if it must, so no
   interrupted ``set()``, ``put()`` or hand-over leaves a survivor asleep. A lock taken by
   a thread that did not survive (its owner is a greenlet of that thread, or not recorded
   yet) is freed, or handed to a surviving waiter: nobody else could ever release it (the
   state it guarded may be half-updated, exactly as with a ``threading.Lock`` held by a
   thread that vanished). Each :class:`~sync_primitives.Thread` that did not survive is
   marked ended, and :class:`~sync_primitives.ThreadResource` drops the other threads'
   entries.

Objects take part by being passed to :func:`track` when they are made and by having an
``_after_fork(stage)`` method. The order matters: a closing port takes the mutexes that
``RENEW`` unlocked, a lock is only freed once a wake-up abandoned by ``CLOSE`` has had its
chance to hand it over, and the wake-ups of ``RESUME`` go through the re-initialised loop.
What survived is told apart by identity, never by thread ident: a port survives if it is
the forking thread's port (``HubPort.is_current``), a greenlet if its chain of parents ends
at the forking thread's main greenlet (:func:`survives`).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol

from gevent import monkey
from gevent._hub_local import get_hub_if_exists
from gevent.hub import reinit as reinit_hub
from greenlet import getcurrent

_allocate_native_lock = monkey.get_original("_thread", "allocate_lock")

#: The repair stages, in order (see the module documentation).
RENEW, CLOSE, RESUME = 0, 1, 2


class ForkAware(Protocol):
    def _after_fork(self, stage: int) -> None: ...


#: How many times this process is a fork child of a process that imported the package.
#: Objects made in great numbers (``AsyncResult``) are tracked only once somebody waits on
#: them; until then they compare the generation they were made in with this one before they
#: take their mutex, and call :func:`renew_lazily` when it differs.
generation = 0

_registry: list[weakref.ref[Any]] = []
#: Module-level native locks, unlocked in a child before anything else (see module_lock).
_module_locks: list[Any] = []


def module_lock() -> Any:
    """A native lock for module-level state, unlocked in place in a child process.

    For the few locks that belong to no tracked object; any thread may use it.
    """
    lock = _allocate_native_lock()
    _module_locks.append(lock)
    return lock


_registry_lock = module_lock()
_prune_at = 1024


def track(obj: ForkAware) -> None:
    """Repair ``obj`` in a child process after ``fork()``; any thread.

    About a microsecond: for objects that are not made by the thousand.
    """
    global _prune_at
    ref = weakref.ref(obj)
    with _registry_lock:
        _registry.append(ref)
        if len(_registry) >= _prune_at:
            _registry[:] = [r for r in _registry if r() is not None]
            _prune_at = max(1024, 2 * len(_registry))


class LazilyRenewed(ForkAware, Protocol):
    _fork_generation: int


_lazy_lock = module_lock()


def renew_lazily(obj: LazilyRenewed) -> None:
    """Do the ``RENEW`` stage of an untracked ``obj`` that was made before a fork, once
    (other threads of the child may be trying at the same time)."""
    with _lazy_lock:
        if obj._fork_generation != generation:
            obj._after_fork(RENEW)


def survives(greenlet: Any) -> bool:
    """In the child: True if ``greenlet`` belongs to the forking (the only) thread.

    Every greenlet's chain of parents ends at the main greenlet of its own thread.
    """
    return _root(greenlet) is _root(getcurrent())


def _root(greenlet: Any) -> Any:
    while greenlet.parent is not None:
        greenlet = greenlet.parent
    return greenlet


def _after_fork_in_child() -> None:
    global generation
    generation += 1
    for lock in _module_locks:
        lock._at_fork_reinit()
    live = [obj for obj in (ref() for ref in _registry) if obj is not None]
    _registry[:] = [weakref.ref(obj) for obj in live]
    for stage in (RENEW, CLOSE):
        for obj in live:
            obj._after_fork(stage)
    hub = get_hub_if_exists()
    if hub is not None:
        reinit_hub(hub)
    for obj in live:
        obj._after_fork(RESUME)


os.register_at_fork(after_in_child=_after_fork_in_child)

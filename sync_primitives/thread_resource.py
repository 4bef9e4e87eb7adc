"""ThreadResource: one lazily created resource per OS thread, visible from every thread.

.. important::
   ``get()`` and ``pop()`` act on the resource of the calling *OS thread* (all greenlets of a
   thread share it, also after ``gevent.monkey.patch_all()``); iteration may be done from any
   thread. A thread's resource is dropped when that thread exits, by a hook that runs in the
   exiting thread.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ._fork import RENEW, RESUME, track
from ._hub import allocate_native_lock, call_at_thread_exit, cancel_thread_exit, native_get_ident

T = TypeVar("T")


class ThreadResource(Generic[T]):
    """Per-thread resources made by ``init_resource()`` on first use in each thread."""

    __slots__ = ("__weakref__", "_init", "_mutex", "_resources")

    def __init__(self, init_resource: Callable[[], T]) -> None:
        self._init = init_resource
        self._mutex = allocate_native_lock()
        self._resources: dict[int, T] = {}
        track(self)

    def get(self) -> T:
        """The calling thread's resource, created now if it has none."""
        ident = native_get_ident()
        try:
            return self._resources[ident]
        except KeyError:
            pass
        resource = self._init()  # outside the mutex: it may block or yield
        with self._mutex:
            # Another greenlet of this thread may have made one meanwhile: keep the first.
            resource = self._resources.setdefault(ident, resource)
        call_at_thread_exit(self._hook_key(), _forget(weakref.ref(self), ident))
        return resource

    def pop(self) -> T | None:
        """Remove and return the calling thread's resource (None if it has none)."""
        ident = native_get_ident()
        with self._mutex:
            resource = self._resources.pop(ident, None)
        cancel_thread_exit(self._hook_key())
        return resource

    def __iter__(self) -> Iterator[T]:
        """The resources of all live threads that have one (a snapshot)."""
        with self._mutex:
            return iter(list(self._resources.values()))

    def __len__(self) -> int:
        return len(self._resources)

    def _hook_key(self) -> tuple[str, int]:
        return ("ThreadResource", id(self))

    def _after_fork(self, stage: int) -> None:
        """In a child process (see ``_fork``): only the forking thread's resource stays."""
        if stage == RENEW:
            self._mutex._at_fork_reinit()
        elif stage == RESUME:
            ident = native_get_ident()  # the forking thread keeps its ident in the child
            self._resources = {k: v for k, v in self._resources.items() if k == ident}

    def _forget_thread(self, ident: int) -> None:
        with self._mutex:
            self._resources.pop(ident, None)


def _forget(ref: weakref.ref[ThreadResource[T]], ident: int) -> Callable[[], None]:
    def hook() -> None:
        owner = ref()
        if owner is not None:
            owner._forget_thread(ident)

    return hook

"""Synchronization primitives shared by OS threads and gevent greenlets.

.. important::
   gevent's own ``Event``, ``AsyncResult`` and ``Queue`` serve the greenlets of one thread.
   These serve greenlets of *any* thread's hub and threads without a hub, all at once, with
   and without ``gevent.monkey.patch_all()``. Each module states which thread or hub its
   objects belong to; in short: ``Lock``, ``RLock``, ``Event``, ``AsyncResult`` and ``Queue``
   belong to no thread; ``HubTrigger`` and ``Launcher`` run their work in the thread that
   created them; ``Thread`` runs its work in its own thread; ``ThreadResource`` keeps one
   resource per thread. A blocking call yields to the caller's hub if its thread has one,
   and blocks natively otherwise.
"""

from .errors import ClosedError, ThreadStoppedError, WouldDeadlockError
from .event import AsyncResult, Event, EventStatistics
from .launcher import Launcher, LauncherStatistics
from .lock import Lock, LockStatistics, RLock
from .queue import Empty, Full, Queue, QueueStatistics
from .thread import Thread, ThreadStatistics
from .thread_resource import ThreadResource
from .trigger import HubTrigger, TriggerStatistics

__all__ = [
    "AsyncResult",
    "ClosedError",
    "Empty",
    "Event",
    "EventStatistics",
    "Full",
    "HubTrigger",
    "Launcher",
    "LauncherStatistics",
    "Lock",
    "LockStatistics",
    "Queue",
    "QueueStatistics",
    "RLock",
    "Thread",
    "ThreadResource",
    "ThreadStatistics",
    "ThreadStoppedError",
    "TriggerStatistics",
    "WouldDeadlockError",
]

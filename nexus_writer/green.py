"""Whether the caller can wait cooperatively, and a pause that does when it can.

.. important::
   Plain functions: they look at the calling thread and greenlet, any thread may call them.
"""

from __future__ import annotations

import time

import gevent
from gevent._hub_local import get_hub_if_exists
from greenlet import getcurrent


def in_greenlet() -> bool:
    """True in a greenlet of this thread's gevent hub (not the hub itself): a wait there
    must yield to the hub, or it stops every other greenlet of the thread."""
    hub = get_hub_if_exists()
    return hub is not None and getcurrent() is not hub


def pause(seconds: float) -> None:
    """Sleep, yielding to this thread's hub in a greenlet of it (``pause(0)``: let the
    hub's other greenlets run)."""
    if in_greenlet():
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)

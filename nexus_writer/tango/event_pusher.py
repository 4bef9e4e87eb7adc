"""EventPusher: the one thread that changes a green-mode device's State and Status and
pushes its change events, under the device's monitor.

.. important::
   :meth:`EventPusher.push` and :meth:`EventPusher.show` are called from the device's
   hub (its greenlets and commands) and never block. The pusher's own thread alone calls
   Tango's ``set_state``, ``set_status`` and ``push_change_event`` for the device, each
   time holding the device's monitor; the one exception is
   :meth:`EventPusher.show_in_command`, called by a command while Tango holds the monitor
   for it.

Why a thread of its own: PyTango runs gevent servers with ``SerialModel.NO_SYNC``, where
nothing serialises a pushed change event with a client's read of the same attribute. Both
fill, marshal and free the attribute's one C++ value buffer: reads fail with
``API_AttrValueNotSet`` and the server dies of a double free under load (pytango issues 5
and 172, cppTango issue 511; ``scripts/push_read_race.py`` shows it in seconds). Under
``SerialModel.BY_DEVICE``, every request holds the device monitor, and so does a push
(PyTango takes it): reads and pushes take turns. But a green command runs in the hub
*while* Tango holds the monitor for it, so a push made in the hub would wait for a
monitor that waits for the hub: a deadlock. Pushes therefore leave the hub for this
thread, which waits for the monitor without holding up anybody; the hub never waits for
the monitor, and nothing here waits for the hub.

Order: events are pushed in the order they were given. State and Status are shown as the
device last computed them (:meth:`show` carries no value): a burst of changes may push
only the last one, never an old one after a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tango import AutoTangoMonitor, DevFailed, DevState
from tango.server import Device

from sync_primitives import Queue

_log = logging.getLogger(__name__)

#: A state as the device computes it: the State and the Status text.
Shown = tuple[DevState, str]

_STATE = "State and Status"  # the queue's item for "show the current state"
_CLOSE = "close"  # the queue's item for "stop"
#: The reason of Tango's DevFailed when the monitor was not free within its timeout.
MONITOR_TIMEOUT = "API_CommandTimedOut"


class EventPusher:
    """Pushes the change events of ``device``, which computes its current state with
    ``current`` (called by the pusher under the monitor: it must read, not compute)."""

    def __init__(self, device: Device, current: Callable[[], Shown | None]) -> None:
        self._device = device
        self._current = current
        self._items: Queue[Any] = Queue()
        # Read and written under the device monitor only (this thread, or a command).
        self._applied: Shown | None = None  # set with set_state/set_status
        self._pushed: Shown | None = None  # pushed as change events
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"EventPusher {device.get_name()}", daemon=True
        )
        self._thread.start()

    def push(self, attribute: str, value: Any) -> None:
        """Push ``value`` as a change event of ``attribute``, after those given before."""
        self._items.put_nowait((attribute, value))

    def show(self) -> None:
        """Set the State and Status that ``current`` gives now, and push their events if
        they changed."""
        self._items.put_nowait(_STATE)

    def show_in_command(self) -> None:
        """:meth:`show`, from a command (in the hub, while Tango holds the monitor for
        the command): State and Status have changed when the command returns; their
        events follow once it has."""
        self._apply()
        self._items.put_nowait(_STATE)

    def close(self, timeout: float) -> bool:
        """Push what was given, then stop; whether the thread ended within ``timeout``
        (it cannot while someone else holds the monitor, ``Init`` for one)."""
        self._closing = True
        self._items.put_nowait(_CLOSE)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _apply(self) -> None:
        now = self._current()
        if now is not None and now != self._applied:
            self._device.set_state(now[0])
            self._device.set_status(now[1])
            self._applied = now

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is _CLOSE:
                return
            try:
                self._push_when_free(item)
            except Exception:  # never the end of the events: log, go on with the next
                name = item if isinstance(item, str) else item[0]
                _log.exception("%s: cannot push %s", self._device.get_name(), name)

    def _push_when_free(self, item: Any) -> None:
        """Push ``item`` under the monitor, waiting for it as long as it takes (Tango
        gives up after its timeout: this tries again, so that no event is lost to a busy
        device; only a shutdown gives up)."""
        waited = 0
        while True:
            try:
                with AutoTangoMonitor(self._device):  # raises when the wait times out
                    self._push(item)
                return
            except DevFailed as failed:
                if failed.args[0].reason != MONITOR_TIMEOUT or self._closing:
                    raise
                waited += 1
                if waited == 1:
                    _log.warning(
                        "%s: the device monitor is busy (%s): the events wait",
                        self._device.get_name(),
                        str(failed.args[0].desc).strip(),
                    )

    def _push(self, item: Any) -> None:
        if item is _STATE:
            self._apply()
            if self._applied != self._pushed:
                self._device.push_change_event("State")
                self._device.push_change_event("Status")
                self._pushed = self._applied
        else:
            self._device.push_change_event(*item)

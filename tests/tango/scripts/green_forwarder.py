"""A gevent green-mode device whose CallbackScheduler runs callbacks in the device's hub.

``python green_forwarder.py INSTANCE``; ``HW_DEVICE`` names the device whose ``position``
change events it forwards as change events of its own ``position`` (pushed from the
callback, which is safe only in the hub: REFERENCE.md section 2).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import gevent
import tango
from tango.server import Device, attribute

from nexus_writer.tango import STATISTICS_ATTRIBUTE, CallbackScheduler

HW_DEVICE = os.environ["HW_DEVICE"]


class GreenForwarder(Device):
    green_mode = tango.GreenMode.Gevent

    def init_device(self) -> None:
        super().init_device()
        self._position = 0.0
        self._forwarded = 0
        self._outside_hub = 0
        self._thread = threading.get_ident()
        self._hub = gevent.get_hub()
        self.set_change_event("position", True, False)
        self._scheduler = CallbackScheduler(in_hub=True)
        self._scheduler.subscribe(
            HW_DEVICE, "position", tango.EventType.CHANGE_EVENT, self.handle_position
        )

    def delete_device(self) -> None:
        self._scheduler.shutdown()

    def handle_position(self, event: Any) -> None:
        if threading.get_ident() != self._thread or gevent.getcurrent() is self._hub:
            self._outside_hub += 1
        if event.err:
            return
        self._position = event.attr_value.value
        self._forwarded += 1
        self.push_change_event("position", self._position)

    @attribute(dtype=float)
    def position(self) -> float:
        return self._position

    @attribute(dtype=int)
    def forwarded(self) -> int:
        return self._forwarded

    @attribute(dtype=int)
    def outside_hub(self) -> int:
        """Callbacks that ran in another thread, or in the hub greenlet itself."""
        return self._outside_hub

    @attribute(name=STATISTICS_ATTRIBUTE, dtype=str)
    def scheduler_statistics(self) -> str:
        return self._scheduler.statistics_json()


if __name__ == "__main__":
    GreenForwarder.run_server()

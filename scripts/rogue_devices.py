#!/usr/bin/env python3
"""The devices of seed 002's rogue-device scenario, as one Tango device server script.

``python scripts/rogue_devices.py INSTANCE``: which devices run in the instance is what the
Tango database defines (``scripts/rogue_scenario.py`` defines ``hw`` with HwDevice and
``top`` with TopDevice and RogueDevice). Environment variables (seconds unless said):

- ``ROGUE_CALLBACKS``: ``plain`` (Tango callbacks do the work, in Tango's event consumer
  thread) or ``scheduled`` (a CallbackScheduler shared by the server's devices, one worker).
- ``POSITION_PERIOD`` (0.1): HwDevice pushes ``position`` this often.
- ``SCAN_TIME`` (1.0): HwDevice's scan lasts this long, then ``mode`` goes back to IDLE.
- ``ROGUE_DELAY`` (0.3): RogueDevice's position callback takes this long.
- ``SCAN_TIMEOUT`` (3.0): TopDevice's ``Scan`` waits this long for IDLE.
- ``HW_DEVICE`` (``foo/bar/hw``): the device TopDevice and RogueDevice watch.

.. important::
   HwDevice pushes from a thread of its own (a threaded server may); the callbacks of the
   other two devices run in Tango's event consumer thread (plain) or in the scheduler's
   worker (scheduled), and their ``Scan`` waits in the command's own thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import tango
from tango.server import Device, attribute, command, run

from nexus_writer.tango import STATISTICS_ATTRIBUTE, CallbackScheduler, Subscription
from sync_primitives import Event

CALLBACKS = os.environ.get("ROGUE_CALLBACKS", "plain")
POSITION_PERIOD = float(os.environ.get("POSITION_PERIOD", "0.1"))
SCAN_TIME = float(os.environ.get("SCAN_TIME", "1.0"))
ROGUE_DELAY = float(os.environ.get("ROGUE_DELAY", "0.3"))
SCAN_TIMEOUT = float(os.environ.get("SCAN_TIMEOUT", "3.0"))
HW_DEVICE = os.environ.get("HW_DEVICE", "foo/bar/hw")

_scheduler: CallbackScheduler | None = None
_scheduler_lock = threading.Lock()


def scheduler() -> CallbackScheduler:
    """The server's one scheduler, shared by its devices (as a real server would)."""
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None:
            _scheduler = CallbackScheduler(workers=1)
        return _scheduler


class HwDevice(Device):
    """Simulated hardware: ``position`` at 10 Hz, and a ``Scan`` that ends by itself."""

    def init_device(self) -> None:
        super().init_device()
        self._position = 0.0
        self._mode = "IDLE"
        self.set_change_event("position", True, False)
        self.set_change_event("mode", True, False)
        self._reads = 0
        self.set_change_event("unpushed", True, False)
        self.set_state(tango.DevState.ON)
        self.set_change_event("State", True, False)  # a subscriber gets its state at once
        self._stop = threading.Event()
        threading.Thread(target=self._move, daemon=True).start()

    def delete_device(self) -> None:
        self._stop.set()

    def _move(self) -> None:
        while not self._stop.wait(POSITION_PERIOD):
            self._position += 1.0
            self.push_change_event("position", self._position)

    @attribute(dtype=float)
    def position(self) -> float:
        return self._position

    @attribute(dtype=str)
    def mode(self) -> str:
        return self._mode

    @attribute(dtype=int)
    def unpushed(self) -> int:
        """How often it was read before: it changes at each read, and never pushes its
        event, as a change whose event was lost (a subscription's first milliseconds)."""
        self._reads += 1
        return self._reads - 1

    @command
    def Scan(self) -> None:
        self._set_mode("SCANNING")
        threading.Timer(SCAN_TIME, self._set_mode, ("IDLE",)).start()

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        self.push_change_event("mode", mode)


class RogueDevice(Device):
    """Forwards HwDevice's position, taking ROGUE_DELAY seconds per event."""

    def init_device(self) -> None:
        super().init_device()
        self._position = 0.0
        self.set_change_event("position", True, False)
        if CALLBACKS == "scheduled":
            self._subscription: Subscription | None = scheduler().subscribe(
                HW_DEVICE, "position", tango.EventType.CHANGE_EVENT, self.handle_position
            )
        else:
            self._proxy = tango.DeviceProxy(HW_DEVICE)
            self._proxy.subscribe_event(
                "position", tango.EventType.CHANGE_EVENT, self.handle_position
            )

    def handle_position(self, event: Any) -> None:
        time.sleep(ROGUE_DELAY)  # the defect: a slow callback
        if not event.err:
            self._position = event.attr_value.value
            self.push_change_event("position", self._position)

    @attribute(dtype=float)
    def position(self) -> float:
        return self._position


class TopDevice(Device):
    """``Scan``: start HwDevice's scan and wait for its mode to come back to IDLE."""

    def init_device(self) -> None:
        super().init_device()
        self._hw = tango.DeviceProxy(HW_DEVICE)
        self._idle = Event()
        self._scanning = False
        self._scan_started = 0.0
        self._latency: float | None = None

    def handle_mode(self, event: Any) -> None:
        if event.err:
            return
        if event.attr_value.value == "SCANNING":
            self._scanning = True
        elif self._scanning:  # not the IDLE read while subscribing, before the scan
            self._latency = time.time() - event.attr_value.time.totime()
            self._idle.set()

    @command(dtype_out=str)
    def Scan(self) -> str:
        """Run a scan; returns JSON: its duration and the IDLE event's latency (s)."""
        self._idle.clear()
        self._scanning = False
        self._latency = None
        self._scan_started = time.time()
        if CALLBACKS == "scheduled":
            subscription = scheduler().subscribe(
                HW_DEVICE, "mode", tango.EventType.CHANGE_EVENT, self.handle_mode
            )
            subscription.wait(SCAN_TIMEOUT)
            end = lambda: scheduler().unsubscribe(subscription)  # noqa: E731
        else:
            event_id = self._hw.subscribe_event(
                "mode", tango.EventType.CHANGE_EVENT, self.handle_mode
            )
            end = lambda: self._hw.unsubscribe_event(event_id)  # noqa: E731
        try:
            self._hw.Scan()
            if not self._idle.wait(SCAN_TIMEOUT):
                raise RuntimeError("Timeout waiting for Mode.IDLE")
            return json.dumps(
                {"duration": time.time() - self._scan_started, "mode_latency": self._latency}
            )
        finally:
            end()

    @attribute(name=STATISTICS_ATTRIBUTE, dtype=str)
    def scheduler_statistics(self) -> str:
        return scheduler().statistics_json() if CALLBACKS == "scheduled" else "{}"


if __name__ == "__main__":
    run((HwDevice, RogueDevice, TopDevice))

"""Reproduce the race of gevent green-mode Tango servers between an attribute's pushed
change events and client reads of the same attribute, which the NexusWriter device avoids
(docs/operations.md, nexus_writer/tango/event_pusher.py).

PyTango runs gevent servers with ``SerialModel.NO_SYNC``: a push with a value takes the
device monitor, a client read takes the attribute's mutex, and both fill and free the
one value buffer of the attribute. Upstream: pytango issues 5 and 172, cppTango issue 511.

``python scripts/push_read_race.py [SECONDS] [READERS]``: starts an embedded Tango
database and a minimal green device that pushes change events of ``keys`` every
millisecond from its hub, reads ``keys`` from READERS client threads, and says whether the
server survived and which errors the clients saw (it dies within seconds).
``--fixed`` runs the same device the NexusWriter's way: ``SerialModel.BY_DEVICE`` and the
pushes handed from the hub to an :class:`~nexus_writer.tango.event_pusher.EventPusher`
(it survives, with no read error). ``python scripts/push_read_race.py server INSTANCE
[--fixed]`` is the device server itself.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import gevent
import tango
from tango.server import Device, attribute, run

from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.event_pusher import EventPusher

DEVICE = "test/race/1"
#: The NexusWriter's way (--fixed), or PyTango's default for gevent servers.
FIXED = "--fixed" in sys.argv


class Racer(Device):
    """Pushes ``keys`` every millisecond, as the NexusWriter device pushes scans_running."""

    green_mode = tango.GreenMode.Gevent

    def init_device(self) -> None:
        super().init_device()
        self._keys: list[str] = []
        self.set_change_event("keys", True, False)
        self._events: EventPusher | None = None
        if FIXED:
            tango.Util.instance().set_serial_model(tango.SerialModel.BY_DEVICE)
            self._events = EventPusher(self, lambda: None)
        self._pusher = gevent.spawn(self._push)

    def delete_device(self) -> None:
        self._pusher.kill()

    def _push(self) -> None:
        count = 0
        while True:
            count += 1
            self._keys = [f"scan:{count}:{i}" for i in range(count % 5)]
            if self._events is not None:  # pushed by its thread, under the monitor
                self._events.push("keys", list(self._keys))
            else:  # pushed here, in the hub, as PyTango allows
                self.push_change_event("keys", list(self._keys))
            gevent.sleep(0.001)

    @attribute(dtype=(str,), max_dim_x=1000, read_green_mode=False)
    def keys(self) -> list[str]:
        return list(self._keys)


def main(seconds: float, readers: int) -> int:
    with EmbeddedTangoDatabase() as database:
        os.environ["TANGO_HOST"] = database.tango_host
        database.add_device("push_read_race/race", "Racer", DEVICE)
        server = DeviceServer(
            [sys.executable, __file__, "server", "race", *(["--fixed"] if FIXED else [])],
            tango_host=database.tango_host,
        ).start()
        stop, errors, reads = threading.Event(), Counter[str](), [0]

        def read() -> None:
            proxy = tango.DeviceProxy(DEVICE)
            while not stop.is_set():
                try:
                    proxy.read_attribute("keys")
                    reads[0] += 1
                except tango.DevFailed as failed:
                    errors[failed.args[0].reason] += 1

        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and server.alive():
            time.sleep(0.2)
        alive = server.alive()
        stop.set()
        for thread in threads:
            thread.join(15)
        server.stop()
    print(f"server {'alive' if alive else 'DIED'}; {reads[0]} reads; errors: {dict(errors)}")
    return 0 if alive and not errors else 1


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--fixed"]
    if arguments[:1] == ["server"]:
        run((Racer,), args=[sys.argv[0], *arguments[1:]], green_mode=tango.GreenMode.Gevent)
    else:
        sys.exit(main(float((arguments or ["20"])[0]), int((arguments[1:] or ["8"])[0])))

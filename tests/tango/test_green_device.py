"""Gevent green-mode device servers: one whose CallbackScheduler runs its callbacks in the
device's hub, where PyTango lets it push change events (REFERENCE.md section 2), and the
race between such pushes and reads of the same attribute, which the NexusWriter's way
avoids (scripts/push_read_race.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import tango

from nexus_writer.tango import STATISTICS_ATTRIBUTE, CallbackScheduler
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from tests.conftest import wait_until
from tests.tango.conftest import HW_DEVICES, server_env

FORWARDER = Path(__file__).parent / "scripts" / "green_forwarder.py"
RACE = Path(__file__).parents[2] / "scripts" / "push_read_race.py"


def test_callbacks_run_in_the_hub_of_a_green_mode_device(
    tango_database: EmbeddedTangoDatabase, hw_server: DeviceServer
) -> None:
    tango_database.add_device("GreenForwarder/test", "GreenForwarder", "test/forwarder/1")
    with tango_database.start_server(FORWARDER, "test", env=server_env(HW_DEVICE=HW_DEVICES[0])):
        forwarder = tango.DeviceProxy("test/forwarder/1")
        received: list[float] = []
        client = CallbackScheduler()
        try:
            client.subscribe(
                "test/forwarder/1",
                "position",
                tango.EventType.CHANGE_EVENT,
                lambda event: None if event.err else received.append(event.attr_value.value),
            ).wait(20)
            wait_until(lambda: len(received) >= 20, "twenty forwarded events", timeout=20)
        finally:
            client.shutdown()
        assert received == sorted(received)
        # Every event the client got was pushed from a hub callback, but the first: the
        # value read while subscribing.
        assert forwarder.read_attribute("forwarded").value >= len(received) - 1
        assert forwarder.read_attribute("outside_hub").value == 0
        stats: dict[str, Any] = json.loads(forwarder.read_attribute(STATISTICS_ATTRIBUTE).value)
        (queue,) = stats["queues"]
        assert queue["queue"] == f"{HW_DEVICES[0]}/position.change"
        assert queue["processed"] >= len(received) - 1
        assert stats["subscriptions"][0]["state"] == "subscribed"


def test_pushes_and_reads_of_one_attribute_take_turns_the_nexuswriters_way() -> None:
    """The minimal device that dies within seconds under PyTango's default (NO_SYNC,
    pushes from the hub) lives through readers flat out with BY_DEVICE and an EventPusher,
    without a read error."""
    done = subprocess.run(
        [sys.executable, str(RACE), "4", "6", "--fixed"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server_env()},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "server alive" in done.stdout and "errors: {}" in done.stdout

"""Tango fixtures: one embedded database for the session, a hardware device server on it.

This process's ``TANGO_HOST`` is set once, before its first Tango call (cppTango reads it
once per process): every Tango test of the session uses the same database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "scripts" / "rogue_devices.py"
#: Two devices pushing ``position`` every 20 ms, in server ``rogue_devices/hw``.
HW_DEVICES = ("test/hw/1", "test/hw/2")


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a device server child: our sources on its path."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), **extra}


@pytest.fixture(scope="session")
def tango_database(nexus_tango_database: EmbeddedTangoDatabase) -> EmbeddedTangoDatabase:
    """The testing kit's Tango database, also for short device names in this process."""
    os.environ["TANGO_HOST"] = nexus_tango_database.tango_host
    return nexus_tango_database


@pytest.fixture(scope="session")
def hw_server(tango_database: EmbeddedTangoDatabase) -> Iterator[DeviceServer]:
    for device in HW_DEVICES:
        tango_database.add_device("rogue_devices/hw", "HwDevice", device)
    with tango_database.start_server(
        DEVICES, "hw", env=server_env(POSITION_PERIOD="0.02")
    ) as server:
        yield server

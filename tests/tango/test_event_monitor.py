"""The event monitor: its diffs and tables on real QueryEventSystem replies (tests/tango/data,
recorded from cppTango 10.3), and ``nexus-writer event-monitor`` against real servers."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tango
from rich.console import Console

from nexus_writer.tango import CallbackScheduler
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.event_monitor import StopRequest, client_performance, compare, render
from tests.conftest import wait_until
from tests.tango.conftest import DEVICES, HW_DEVICES, server_env
from tests.writer.test_service import lines_of, wait_for_line

DATA = Path(__file__).parent / "data"
SAMPLE = json.loads((DATA / "query_event_system_sample.json").read_text())
COUNTER = "tango://127.0.0.1:10125/test/push/1/counter"


def text_of(renderable: Any) -> str:
    console = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_the_first_snapshot_shows_everything_as_new() -> None:
    publisher = compare(
        "dserver/push/test", ["test/push/1"], None, SAMPLE["no_perf"]["publisher_dserver"]
    )
    assert publisher.new_publishers == {f"{COUNTER}.change": 101, SAMPLE_SPECTRUM: 1}
    subscriber = compare(
        "dserver/sub/test", ["test/sub/1"], None, SAMPLE["no_perf"]["subscriber_dserver"]
    )
    assert subscriber.new_subscriptions[f"{COUNTER}.idl5_change"]["event_count"] == 100
    text = text_of(render("T", [publisher, subscriber]))
    assert "New publishers" in text
    assert "test/push/1/counter.change  101 is the last pushed server counter" in text
    assert "tango://" not in text  # names are shown without the database's address


SAMPLE_SPECTRUM = "tango://127.0.0.1:10125/test/push/1/spectrum.change"


def test_counters_that_moved_are_shown_as_before_after_and_change() -> None:
    before = SAMPLE["no_perf"]["subscriber_dserver"]
    after = SAMPLE["with_perf"]["subscriber_dserver"]
    report = compare("dserver/sub/test", ["test/sub/1"], before, after)
    moved = {(stream, key): (a, b) for stream, key, a, b in report.received}
    was = before["client"]["event_callbacks"][f"{COUNTER}.idl5_change"]["event_count"]
    now = after["client"]["event_callbacks"][f"{COUNTER}.idl5_change"]["event_count"]
    assert moved[(f"{COUNTER}.idl5_change", "event_count")] == (was, now)
    text = text_of(render("T", [report]))
    assert f"{was} -> {now} (+{now - was}) events processed" in text
    publisher = compare(
        "p", ["d"], SAMPLE["no_perf"]["publisher_dserver"], SAMPLE["with_perf"]["publisher_dserver"]
    )
    assert publisher.published[f"{COUNTER}.change"] == (101, 171)
    assert "101 -> 171 (+70) last pushed server counter" in text_of(render("T", [publisher]))


def test_performance_samples_become_tables_with_units() -> None:
    report = compare(
        "p", ["d"], SAMPLE["no_perf"]["publisher_dserver"], SAMPLE["with_perf"]["publisher_dserver"]
    )
    gaps = report.server_perf["Event gaps"]
    assert gaps is not None
    perf = SAMPLE["with_perf"]["publisher_dserver"]["server"]["perf"]
    assert gaps.count == sum(1 for s in perf if s["micros_since_last_event"] is not None)
    assert 10 in gaps.percentiles  # enough samples for percentiles
    text = text_of(render("T", [report]))
    assert "Event gaps [ms]" in text  # a unit in brackets, not taken for markup
    assert "Push time [µs]" in text

    client = SAMPLE["with_perf"]["subscriber_dserver"]["client"]["perf"]
    rows = client_performance(client)
    assert set(rows) >= {"Event gaps", "Sleep time", "Latency", "Callbacks called", "Wake count"}
    processing = rows["counter processing time"]
    assert processing is not None
    assert processing.count == sum(
        1 for s in client if s["attr_name"] == "counter" and not s.get("discarded")
    )


def test_a_discarded_sample_counts_in_gaps_but_not_in_processing() -> None:
    samples = json.loads((DATA / "query_event_system_client_apiutil_sample.json").read_text())
    rows = client_performance(samples["client"]["perf"])
    assert rows["Event gaps"] is not None and rows["Event gaps"].count == 2
    assert rows["counter processing time"] is not None
    assert rows["counter processing time"].count == 2
    assert rows["Latency"] is not None and rows["Latency"].count == 2


# -- against real servers -------------------------------------------------------------


@pytest.fixture
def subscribed(hw_server: DeviceServer) -> Iterator[CallbackScheduler]:
    """This process subscribes to a hardware device, so that its server publishes."""
    scheduler = CallbackScheduler()
    scheduler.subscribe(
        HW_DEVICES[0], "position", tango.EventType.CHANGE_EVENT, lambda e: None
    ).wait(20)
    yield scheduler
    scheduler.shutdown()


def admin_perf() -> Any:
    admin = tango.DeviceProxy(tango.DeviceProxy(HW_DEVICES[0]).adm_name())
    return json.loads(admin.QueryEventSystem())["server"]["perf"]


def monitor(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus_writer.cli", "event-monitor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_monitor_prints_diffs_and_tables_and_leaves_perf_off(
    subscribed: CallbackScheduler, tmp_path: Path
) -> None:
    jsonl = tmp_path / "snapshots.jsonl"
    process = monitor(
        "--monitor", "--period", "0.5", "--count", "3", "--jsonl", str(jsonl), HW_DEVICES[0]
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert "dserver/rogue_devices/hw (from test/hw/1)" in out
    assert "New publishers" in out
    assert "test/hw/1/position.change" in out
    assert "Published events" in out  # position moved between two snapshots
    assert "Server performance" in out and "Push time" in out
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 3
    server = records[-1]["servers"]["dserver/rogue_devices/hw"]
    assert server["error"] is None
    assert server["reply"]["server"]["perf"] is not None  # on while it ran
    assert admin_perf() is None  # and off again


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_monitor_turns_perf_off(
    subscribed: CallbackScheduler, signum: signal.Signals
) -> None:
    process = monitor("--monitor", "--period", "0.2", HW_DEVICES[0])
    lines = lines_of(process.stdout)
    wait_for_line(lines, "Published events")  # running, with performance monitoring on
    assert admin_perf() is not None
    process.send_signal(signum)
    assert process.wait(30) == 0
    assert admin_perf() is None


def test_an_unknown_device_is_named_and_exits_2(hw_server: DeviceServer) -> None:
    process = monitor("--count", "1", "test/nobody/1")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "test/nobody/1" in out and "DB_DeviceNotDefined" in out
    assert len(out.strip().splitlines()) == 1  # one line, whatever the width


@pytest.fixture
def stalled(tango_database: EmbeddedTangoDatabase) -> Iterator[DeviceServer]:
    """A server of its own, stopped (SIGSTOP) until the test ends: it takes requests and
    answers none until then."""
    tango_database.add_device("rogue_devices/stall", "HwDevice", "test/stall/1")
    with tango_database.start_server(DEVICES, "stall", env=server_env()) as server:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            yield server
        finally:
            os.kill(server.pid, signal.SIGCONT)


def perf_of(device: str) -> Any:
    admin = tango.DeviceProxy(tango.DeviceProxy(device).adm_name())
    return json.loads(admin.QueryEventSystem())["server"]["perf"]


def test_a_server_that_never_answered_is_shown_unreachable_and_left_with_perf_off(
    stalled: DeviceServer,
) -> None:
    process = monitor("--monitor", "--period", "0.2", "--count", "2", "test/stall/1")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert out.count("! unreachable: API_") == 2, out  # a CORBA time-out, here
    assert stalled.pid is not None
    os.kill(stalled.pid, signal.SIGCONT)  # it now runs what it was sent: on, then off
    wait_until(lambda: perf_of("test/stall/1") is None, "monitoring off", timeout=20)


def test_a_server_not_running_is_unreachable_not_an_error(
    tango_database: EmbeddedTangoDatabase,
) -> None:
    tango_database.add_device("rogue_devices/offline", "HwDevice", "test/offline/1")
    process = monitor("--count", "1", "test/offline/1")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert "dserver/rogue_devices/offline (from test/offline/1)" in out
    assert "! unreachable: API_" in out


def test_a_second_ctrl_c_does_not_leave_perf_on(
    subscribed: CallbackScheduler, stalled: DeviceServer
) -> None:
    # Turning monitoring off takes the stalled server's 3 s time-out: a user presses
    # Ctrl-C again meanwhile.
    process = monitor("--monitor", "--period", "0.2", HW_DEVICES[0], "test/stall/1")
    try:
        lines = lines_of(process.stdout)
        wait_for_line(lines, "Published events")
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()  # (a monitor that hangs must not outlive the test)
        process.wait()
    assert admin_perf() is None


@pytest.mark.timeout(60)
def test_a_stop_asked_by_signals_that_interrupt_the_wait_and_each_other_ends_it() -> None:
    """SIGUSR1 every half millisecond, whose handler asks to stop, while this (the main)
    thread waits and asks too: a handler that runs inside wait() or set() must not wait
    for what its own thread holds. With a threading.Event in its place this test hangs
    (a handler's set() waits for the lock of the set() or wait() it interrupted), as the
    monitor did when Ctrl-C was pressed twice."""
    stop = StopRequest()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: stop.set())
    main, done = threading.get_ident(), threading.Event()

    def send() -> None:
        while not done.wait(0.0005):
            signal.pthread_kill(main, signal.SIGUSR1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert stop.wait(30)
        for _ in range(20_000):  # each set() and wait() interrupted many times over
            stop.set()
            assert stop.wait(0)
    finally:
        done.set()
        sender.join(30)
        signal.signal(signal.SIGUSR1, previous)
    assert stop.is_set()


_LATE_SIGNALS = """
import random, signal, sys, time
from nexus_writer.tango.event_monitor import StopRequest
current = None
signal.signal(signal.SIGALRM, lambda signum, frame: current.set())
slept = 0
for _ in range(2000):
    current = StopRequest()
    restore = current.wake_on_signals()
    signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 40e-6))  # as wait() starts
    started = time.monotonic()
    current.wait(0.05)
    slept += time.monotonic() - started >= 0.045
    while not current.is_set():
        signal.pause()
    restore()
    current.close()
print(slept)
"""


def test_a_signal_just_before_the_wait_sleeps_wakes_it_at_once() -> None:
    """Found by a hostile review: a signal between wait()'s look at the flag and its
    poll had its handler run only when the poll timed out (about 1 wait in 30 slept its
    whole timeout: a Ctrl-C ignored for a whole period). The wake-up descriptor ends the
    poll at once. (In a child: its SIGALRM is not pytest-timeout's.)"""
    run = subprocess.run(
        [sys.executable, "-c", _LATE_SIGNALS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0", run.stdout


def test_a_stop_request_waits_on_a_descriptor_beyond_1023() -> None:
    """select() refuses descriptors from 1024 on; poll() does not."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        pytest.skip(f"the descriptor limit ({soft}) is below 1100")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1050)]
    try:
        stop = StopRequest()
        assert not stop.wait(0.01)
        stop.set()
        assert stop.wait(0.01)
        stop.close()
    finally:
        for fd in held:
            os.close(fd)


def test_a_closed_stop_request_lets_its_pipe_go_and_waits_no_more() -> None:
    stop = StopRequest()
    stop.close()
    assert not stop.wait(None)  # returns at once, not set
    stop.set()  # writes nowhere
    assert stop.is_set() and stop.wait(None)


def test_a_stop_request_waits_its_timeout_and_wakes_a_waiting_thread() -> None:
    stop = StopRequest()
    started = time.monotonic()
    assert not stop.wait(0.05)
    assert time.monotonic() - started >= 0.05
    woken = threading.Event()

    def wait() -> None:
        if stop.wait(30):
            woken.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    stop.set()
    waiter.join(30)
    assert woken.is_set()


@pytest.mark.parametrize("timeout", [math.nan, -1.0, 0.0])
def test_a_stop_request_with_a_nan_or_negative_timeout_does_not_wait(timeout: float) -> None:
    stop = StopRequest()
    assert not stop.wait(timeout)
    stop.set()
    assert stop.wait(timeout)
    stop.close()


def test_a_restarted_schedulers_new_events_are_those_since_its_restart() -> None:
    def stats(processed: int) -> dict[str, Any]:
        return {"queues": [{"queue": "q", "processed": processed}]}

    reply = SAMPLE["no_perf"]["subscriber_dserver"]
    moved = compare(
        "a", ["d"], reply, reply, schedulers={"d": stats(30)}, schedulers_before={"d": stats(20)}
    )
    assert moved.schedulers["d"]["queues"][0]["new"] == 10
    restarted = compare(
        "a", ["d"], reply, reply, schedulers={"d": stats(3)}, schedulers_before={"d": stats(20)}
    )
    assert restarted.schedulers["d"]["queues"][0]["new"] == 3

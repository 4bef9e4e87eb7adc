"""The NexusWriter device through Tango: NexusWriterService as its own process on the
embedded database, writing scans that the simulator publishes into a real Redis."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, cast

import gevent
import h5py
import pytest
import tango

from nexus_writer.cli import main as cli
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors
from nexus_writer.tango import CallbackScheduler
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.nexus_writer_device import NexusWriter
from tests.conftest import in_plain_thread, wait_until
from tests.tango.conftest import DEVICES, server_env

SERVICE = Path(sys.executable).with_name("NexusWriterService")
_writers = itertools.count(1)
#: Launch to ON is under 2 s here; a loaded 2-core machine and first imports take longer.
STARTED = 30.0
LOOPBACK = ("-ORBendPoint", "giop:tcp:127.0.0.1:0")


def define(
    database: EmbeddedTangoDatabase,
    device: str,
    session: str,
    server: str | None = None,
    **properties: str | list[str],
) -> None:
    """``nexus-writer register`` the device, in server ``server`` (default: named after
    the device); a property given as a list is given once per value."""
    argv = ["register", "--server", server or device.replace("/", "_"), "--session", session]
    argv += ["--device", device]
    for name, values in properties.items():
        for value in [values] if isinstance(values, str) else values:
            argv += ["--property", f"{name}={value}"]
    assert cli(argv) == 0


def start_service(
    database: EmbeddedTangoDatabase, device: str, server: str | None = None
) -> DeviceServer:
    return DeviceServer(
        [str(SERVICE), server or device.replace("/", "_")],
        tango_host=database.tango_host,
        env=server_env(),
        startup_timeout=STARTED,
    ).start()


def state_of(proxy: tango.DeviceProxy) -> tuple[tango.DevState, str]:
    return proxy.state(), proxy.status()


def wait_for_state(proxy: tango.DeviceProxy, state: tango.DevState) -> str:
    wait_until(lambda: proxy.state() == state, f"{proxy.name()} is {state}", STARTED, 0.05)
    return str(proxy.status())


@pytest.fixture
def writer(
    tango_database: EmbeddedTangoDatabase,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> Iterator[tuple[tango.DeviceProxy, str]]:
    number = next(_writers)
    device, session = f"test/nexuswriter/{number}", f"session{number}"
    define(tango_database, device, session, redis_url=redis_server.url, roots=str(tmp_path))
    with start_service(tango_database, device):
        yield tango.DeviceProxy(device), session


def publish(redis_url: str, session: str, root: Path, *commands: str) -> list[str]:
    """Run the scans; their keys, in order."""
    client = connect(redis_url)
    try:
        beamline = Beamline(
            SessionPublisher(client, session), root=str(root), detectors=Detectors(counters=2)
        )
        return [beamline.run(command).key for command in commands]
    finally:
        client.close()


def statistics(proxy: tango.DeviceProxy) -> Any:
    return json.loads(proxy.statistics())


def test_the_device_writes_its_session_and_says_so(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proxy, session = writer
    assert "Writing session" in wait_for_state(proxy, tango.DevState.ON)
    assert proxy.role == "active"
    publish(redis_server.url, session, tmp_path, "ascan robx 0 1 5 0.001", "loopscan 3 0.001")
    wait_until(
        lambda: (statistics(proxy)["writer"] or {}).get("scans_succeeded") == 2,
        "two scans written",
        STARTED,
        0.05,
    )
    assert list(tmp_path.rglob("*.h5"))


def test_stop_and_start_and_a_start_while_running(
    writer: tuple[tango.DeviceProxy, str],
) -> None:
    proxy, _ = writer
    wait_for_state(proxy, tango.DevState.ON)
    with pytest.raises(tango.DevFailed, match="already running") as failed:
        proxy.start()
    assert failed.value.args[0].reason == "NexusWriter_WrongState"
    assert proxy.state() == tango.DevState.ON  # as it was
    proxy.stop()
    assert proxy.state() in (tango.DevState.CLOSE, tango.DevState.OFF)  # as it returns
    assert "Stopped" in wait_for_state(proxy, tango.DevState.OFF)
    reading = proxy.read_attribute("events_received")
    assert reading.quality == tango.AttrQuality.ATTR_INVALID and reading.value is None
    proxy.stop()  # again: nothing changes
    assert proxy.state() == tango.DevState.OFF
    proxy.start()
    wait_for_state(proxy, tango.DevState.ON)


def test_redis_down_at_start_is_a_fault_that_mends_itself(
    tango_database: EmbeddedTangoDatabase, tmp_path: Path
) -> None:
    with EmbeddedRedis() as redis_server:
        url = redis_server.url
        redis_server.halt()  # its address is known; nothing answers there
        define(tango_database, "test/nexuswriter/noredis", "noredis", redis_url=url)
        with start_service(tango_database, "test/nexuswriter/noredis"):
            proxy = tango.DeviceProxy("test/nexuswriter/noredis")
            status = wait_for_state(proxy, tango.DevState.FAULT)
            assert "Redis unreachable" in status and status.endswith(": retrying until it answers")
            redis_server.resume()
            wait_for_state(proxy, tango.DevState.ON)


def test_a_root_that_is_not_a_directory_is_a_fault_naming_it(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    define(
        tango_database,
        "test/nexuswriter/badroot",
        "badroot",
        redis_url=redis_server.url,
        roots=str(missing),
    )
    with start_service(tango_database, "test/nexuswriter/badroot"):
        proxy = tango.DeviceProxy("test/nexuswriter/badroot")
        status = wait_for_state(proxy, tango.DevState.FAULT)
        assert f"root {missing} is not a writable directory" in status


SCANS = 200


@contextlib.contextmanager
def subscribed(kind: str, device: str, record: Callable[[Any], None]) -> Iterator[None]:
    """``record`` gets every change event of ``scans_running``: through a CallbackScheduler
    (threads), or a plain gevent green-mode proxy (callbacks in this thread's hub)."""
    if kind == "scheduler":
        client = CallbackScheduler()
        try:
            client.subscribe(device, "scans_running", tango.EventType.CHANGE_EVENT, record).wait(
                STARTED
            )
            yield
        finally:
            client.shutdown()
    else:
        proxy = tango.DeviceProxy(device, green_mode=tango.GreenMode.Gevent)
        event_id = proxy.subscribe_event("scans_running", tango.EventType.CHANGE_EVENT, record)
        try:
            yield
        finally:
            proxy.unsubscribe_event(event_id)


def run_scans(
    proxy: tango.DeviceProxy,
    redis_url: str,
    session: str,
    root: Path,
    count: int,
    *,
    publishers: int = 1,
) -> list[str]:
    """Publish ``count`` short scans one after the other from each of ``publishers``
    threads, and wait until the device has written them all; their keys, in order (one
    publisher) or not."""
    commands = ["loopscan 2 0.0001"] * count
    published = [in_plain_thread(publish, redis_url, session, root, *commands)]
    published += [
        in_plain_thread(publish, redis_url, session, root / f"p{n}", *commands)
        for n in range(1, publishers)
    ]
    keys = [key for future in published for key in future.result(120)]
    wait_until(
        lambda: (statistics(proxy)["writer"] or {}).get("scans_succeeded") == len(keys),
        f"{len(keys)} scans written",
        120,
        0.1,
    )
    return keys


def assert_each_start_and_end_once_in_order(
    seen: list[tuple[str, ...]], keys: list[str], ordered: bool = True
) -> dict[str, int]:
    """``seen``, the successive values of scans_running, shows each of ``keys`` start once,
    in order (if ``ordered``), and end once after its start; the position of each end."""
    started: dict[str, int] = {}  # key -> the event that showed it running first
    ended: dict[str, int] = {}
    for position, (before, after) in enumerate(itertools.pairwise(seen)):
        for key in set(after) - set(before):
            assert key not in started, f"{key} started twice"
            started[key] = position
        for key in set(before) - set(after):
            assert key not in ended, f"{key} ended twice"
            ended[key] = position
    assert set(started) == set(keys)  # every start seen
    assert set(ended) == set(started)  # every end seen
    assert all(started[key] < ended[key] for key in started)  # each end after its start
    if ordered:
        assert sorted(started, key=lambda k: started[k]) == keys  # in the order published
    return ended


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["scheduler", "gevent"])
def test_a_client_sees_every_scan_start_and_end_in_order(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path, kind: str
) -> None:
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    seen: list[tuple[str, ...]] = []

    def record(event: Any) -> None:
        if not event.err:
            seen.append(tuple(event.attr_value.value or ()))

    with subscribed(kind, proxy.name(), record):
        keys = run_scans(proxy, redis_server.url, session, tmp_path, SCANS)
        wait_until(lambda: bool(seen) and seen[-1] == (), "the last end seen", STARTED)
    ended = assert_each_start_and_end_once_in_order(seen, keys)
    recent = json.loads(proxy.recent_scans)
    assert [e["key"] for e in recent] == sorted(ended, key=lambda k: ended[k])[-len(recent) :]
    assert {e["state"] for e in recent} == {"OFF"}
    assert {e["end_reason"] for e in recent} == {"SUCCESS"}
    assert {e["points"] for e in recent} == {2}
    last = recent[-1]
    assert proxy.scan_state(last["key"]) == "OFF"
    url = proxy.scan_url(last["key"])
    assert url == last["url"] and "::/" in url


#: Clients reading each attribute as fast as they can while scans start and end ("*":
#: every attribute in one read_attributes, as a GUI does).
READERS = {"scans_running": 3, "recent_scans": 2, "*": 3, "State": 1, "Status": 1}


@pytest.mark.timeout(240)
def test_clients_reading_the_scan_lists_flat_out_while_events_are_pushed(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Reads of an attribute whose change events are pushed with their value used to
    share its value buffer with the pushes (PyTango's NO_SYNC model for green servers):
    reads failed with API_AttrValueNotSet, and the server died of a double free. Every
    read succeeds now, the server lives, and the events are all there."""
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    stop = threading.Event()
    reads: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    def read(name: str) -> None:
        reader = tango.DeviceProxy(proxy.name())
        names = list(reader.get_attribute_list()) if name == "*" else [name]
        while not stop.is_set():
            try:
                for value in reader.read_attributes(names):
                    if value.has_failed:
                        errors[f"{value.name}: {value.get_err_stack()[0].reason}"] += 1
                reads[name] += 1
            except tango.DevFailed as failed:
                errors[f"{name}: {failed.args[0].reason}"] += 1

    seen: list[tuple[str, ...]] = []

    def record(event: Any) -> None:
        seen.append(
            ("error", event.errors[0].reason) if event.err else tuple(event.attr_value.value or ())
        )

    readers = [
        threading.Thread(target=read, args=(name,), daemon=True)
        for name, count in READERS.items()
        for _ in range(count)
    ]
    with subscribed("scheduler", proxy.name(), record):
        for reader in readers:
            reader.start()
        try:
            keys = run_scans(proxy, redis_server.url, session, tmp_path, 50, publishers=3)
            wait_until(lambda: bool(seen) and seen[-1] == (), "the last end seen", STARTED)
        finally:
            stop.set()
            for reader in readers:
                reader.join(STARTED)
    assert not errors, errors
    assert all(reads[name] >= 20 for name in READERS), reads  # they did read meanwhile
    assert proxy.ping() > 0
    assert_each_start_and_end_once_in_order(seen, keys, ordered=False)


def test_scan_commands_name_what_is_wrong(writer: tuple[tango.DeviceProxy, str]) -> None:
    proxy, _ = writer
    wait_for_state(proxy, tango.DevState.ON)
    for command in (proxy.scan_state, proxy.scan_url, proxy.stop_scan, proxy.kill_scan):
        with pytest.raises(tango.DevFailed) as failed:
            command("nothing:1")
        error = failed.value.args[0]
        assert error.reason == "NexusWriter_UnknownScan"
        assert error.desc == (
            "no scan 'nothing:1' is running or among the last 100 finished: "
            "see scans_running and recent_scans"
        )
    with pytest.raises(tango.DevFailed):
        proxy.command_inout("scan_state")  # no argument
    # Tango carries the argument as Latin-1; the message names it in ASCII, as a client
    # of any encoding reads it back.
    with pytest.raises(tango.DevFailed, match=r"no scan 'caf\\xe9' is running"):
        proxy.scan_state("café")
    assert proxy.state() == tango.DevState.ON  # as it was
    proxy.purge_scans()
    assert json.loads(proxy.recent_scans) == []


def test_a_writer_pair_shows_on_and_standby_and_swaps_when_the_active_dies(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    devices = ["test/nexuswriter/pair1", "test/nexuswriter/pair2"]
    for device in devices:
        define(tango_database, device, "pair", redis_url=redis_server.url, lease_ttl="1")
    with start_service(tango_database, devices[0]) as first:
        proxies = [tango.DeviceProxy(d) for d in devices]
        wait_for_state(proxies[0], tango.DevState.ON)
        with start_service(tango_database, devices[1]):
            status = wait_for_state(proxies[1], tango.DevState.STANDBY)
            assert f"is written by device {devices[0]}, pid {first.pid} on " in status
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)  # no goodbye: its lease runs out
            wait_for_state(proxies[1], tango.DevState.ON)
            publish(redis_server.url, "pair", tmp_path, "loopscan 3 0.001")
            wait_until(
                lambda: (statistics(proxies[1])["writer"] or {}).get("scans_succeeded") == 1,
                "the scan written by the one left",
                STARTED,
                0.05,
            )


def fail_a_scan(redis_url: str, session: str) -> str:
    """Publish a scan whose file is outside the roots (a reason Tango cannot carry as it
    is, Ω: the status shows it escaped); its key."""
    client = connect(redis_url)
    try:
        outside = SessionPublisher(client, session).new_scan(
            name="ct", title="ct", file="/outside/the/rootsΩ.h5", channels=[]
        )
        outside.prepare()
        outside.start()
        outside.close()
    finally:
        client.close()
    return outside.key


def test_a_failed_scan_is_an_alarm_until_one_is_written_or_purged(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    key = fail_a_scan(redis_server.url, session)
    status = wait_for_state(proxy, tango.DevState.ALARM)
    with pytest.raises(tango.DevFailed, match=r"ended \(FAULT\) without an entry") as failed:
        proxy.scan_url(key)
    assert failed.value.args[0].reason == "NexusWriter_NoEntry"
    assert key in status and "failed" in status and "/outside/the/roots\\u03a9.h5" in status
    assert proxy.scan_state(key) == "FAULT"
    publish(redis_server.url, session, tmp_path, "loopscan 2 0.001")
    wait_for_state(proxy, tango.DevState.ON)
    fail_a_scan(redis_server.url, session)
    wait_for_state(proxy, tango.DevState.ALARM)
    proxy.purge_scans()
    assert proxy.state() == tango.DevState.ON  # as it returns


def test_tango_attributes_are_stored_in_each_entry_and_a_missing_one_costs_nothing(
    tango_database: EmbeddedTangoDatabase,
    redis_server: EmbeddedRedis,
    hw_server: DeviceServer,
    tmp_path: Path,
) -> None:
    device = "test/nexuswriter/readings"
    define(
        tango_database,
        device,
        "readings",
        redis_url=redis_server.url,
        roots=str(tmp_path),
        attributes=["test/hw/1/position", "test/hw/1/State", "test/nobody/1/current", "////"],
    )
    with start_service(tango_database, device):
        proxy = tango.DeviceProxy(device)
        wait_for_state(proxy, tango.DevState.ON)

        def seen() -> dict[str, str]:
            """Each reading's quality, or its error."""
            readings = json.loads(proxy.readings)
            return {name: r["error"] or r["quality"] for name, r in readings.items()}

        wait_until(
            lambda: (
                (now := seen())["test/hw/1/position"] == now["test/hw/1/State"] == "VALID"
                and "not subscribed: DB_DeviceNotDefined" in now["test/nobody/1/current"]
                and "not subscribed: API_WrongDeviceNameSyntax" in now["////"]
            ),
            "the position and state read, and why the others cannot be",
            STARTED,
            0.05,
        )
        assert json.loads(proxy.readings)["test/hw/1/State"]["value"] == "ON"
        (key,) = publish(redis_server.url, "readings", tmp_path, "loopscan 2 0.001")
        wait_until(partial(written, proxy, key), "the scan written", STARTED, 0.05)
        path, entry = proxy.scan_url(key).split("::")
    with h5py.File(path, "r", locking=False) as handle:
        tango_group = handle[entry]["instrument/tango"]
        assert tango_group.attrs["NX_class"] == "NXcollection"
        position = tango_group["test_hw_1_position"]
        assert position.attrs["source"] == "test/hw/1/position"
        assert position.attrs["quality"] == "VALID"
        assert position[()] > 0 and "time" in position.attrs
        state = tango_group["test_hw_1_State"]
        assert state[()] == b"ON" and state.attrs["quality"] == "VALID"  # by name
        missing = tango_group["test_nobody_1_current"]
        assert missing.attrs["quality"] == "NO_VALUE"
        assert "not subscribed: DB_DeviceNotDefined" in missing.attrs["error"]
    assert nxcheck_errors(path) == 0


def a_long_scan_writing(
    writer: tuple[tango.DeviceProxy, str], redis_url: str, root: Path
) -> tuple[Future[list[str]], str]:
    """A scan of three seconds published, once the device has written some of it: the
    publication under way, and the scan's key."""
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    published = in_plain_thread(publish, redis_url, session, root, "loopscan 60 0.05")
    wait_until(
        lambda: any(s["points"] for s in json.loads(proxy.scans_running_json)),
        "the scan writing",
        STARTED,
        0.02,
    )
    (key,) = proxy.scans_running
    return published, key


def test_a_scan_stopped_before_its_end_is_unfinished_then_written_again(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proxy, _ = writer
    published, key = a_long_scan_writing(writer, redis_server.url, tmp_path)
    proxy.stop()  # three seconds before the scan's end
    wait_for_state(proxy, tango.DevState.OFF)
    assert proxy.scan_state(key) == "UNFINISHED"
    (ended,) = [e for e in json.loads(proxy.recent_scans) if e["key"] == key]
    assert ended["reason"]  # why it is unfinished
    assert published.result(60) == [key]
    proxy.start()  # takes the session again: the scan is written again, whole
    wait_until(partial(written, proxy, key), "the scan written", STARTED, 0.05)


def test_init_empties_the_lists_and_subscribers_see_it(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Init empties both lists (docs/operations.md): a subscriber's last events say so, as
    a read does, without waiting for the next scan."""
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    last: dict[str, Any] = {}

    def record(event: Any) -> None:
        if not event.err:
            last[event.attr_value.name] = event.attr_value.value

    subscriber = tango.DeviceProxy(proxy.name())
    ids = [
        subscriber.subscribe_event(name, tango.EventType.CHANGE_EVENT, record)
        for name in ("scans_running", "recent_scans")
    ]
    try:
        (key,) = publish(redis_server.url, session, tmp_path, "loopscan 2 0.001")
        wait_until(lambda: key in str(last.get("recent_scans")), "the scan's end pushed")
        proxy.Init()
        wait_for_state(proxy, tango.DevState.ON)
        assert json.loads(proxy.recent_scans) == [] and not proxy.scans_running
        wait_until(lambda: last["recent_scans"] == "[]", "the emptied list pushed", STARTED)
        assert not last["scans_running"]
    finally:
        for event_id in ids:
            subscriber.unsubscribe_event(event_id)


def test_init_of_a_device_that_follows_its_own_attributes_answers_in_time(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Init does not wait for the unsubscriptions of the attributes property: one of this
    server's devices (here the device itself) cannot answer their first read while Init
    holds its monitor, so each cost 3.2 s and Init outlived a client's 3 s timeout.
    And the readings come back (they failed for good now and then: followed_attributes.py)."""
    device = "test/nexuswriter/self"
    own = [f"{device}/State", f"{device}/scans_running"]
    define(
        tango_database,
        device,
        "self",
        redis_url=redis_server.url,
        roots=str(tmp_path),
        attributes=own,
    )
    with start_service(tango_database, device):
        proxy = tango.DeviceProxy(device)  # Tango's default timeout: 3 s
        wait_for_state(proxy, tango.DevState.ON)
        for _ in range(3):
            proxy.Init()  # right after the one before: its subscriptions still starting
        wait_for_state(proxy, tango.DevState.ON)
        try:
            wait_until(
                lambda: json.loads(proxy.readings)[own[0]]["value"] == "ON",
                "the device's own State read again",
                STARTED,
                0.05,
            )
        except AssertionError as exc:
            # What the server's own event system holds (its client side follows the device).
            events = tango.DeviceProxy(proxy.adm_name()).command_inout("QueryEventSystem")
            raise AssertionError(
                f"{exc}; readings: {proxy.readings}; event system: {events}"
            ) from None


def states_of_all(proxies: list[tango.DeviceProxy]) -> list[str]:
    """Each device's State by name; "" for one that does not answer (restarting)."""
    states = []
    for proxy in proxies:
        try:
            states.append(str(proxy.state()))
        except tango.DevFailed:
            states.append("")
    return states


def test_two_writers_of_one_server_follow_each_others_state_from_its_start(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Subscribing to a device of the server while it started failed, about one start in
    two, until Tango's next try or for good (API_ZmqFailed 'Invalid argument'): the
    subscriptions wait for the server to be up, after a start as after a restart."""
    first, second = "test/nexuswriter/pair1", "test/nexuswriter/pair2"
    for device, other in ((first, second), (second, first)):
        define(
            tango_database,
            device,
            device.rsplit("/", 1)[-1],
            server="pair",
            redis_url=redis_server.url,
            roots=str(tmp_path),
            attributes=[f"{other}/State", f"{device}/State"],
        )
    with start_service(tango_database, first, server="pair"):
        proxies = [tango.DeviceProxy(first), tango.DeviceProxy(second)]

        def states_read(restarted: list[tango.DeviceProxy], since: float) -> list[object]:
            """The States as the ``restarted`` devices read them since ``since`` (None: not
            read): a new life reads each attribute again."""
            try:
                readings = [r for p in restarted for r in json.loads(p.readings).values()]
            except tango.DevFailed:  # restarting
                return []
            return [r["value"] if (r["time"] or 0) > since else None for r in readings]

        def read_again(restarted: list[tango.DeviceProxy], since: float) -> bool:
            return states_read(restarted, since) == ["ON"] * 2 * len(restarted)

        admin = tango.DeviceProxy(proxies[0].adm_name())
        for restart, restarted in (
            ("the start", proxies),
            ("DevRestart", proxies[1:]),
            ("RestartServer", proxies),  # a start again, without a server_init_hook
        ):
            since = 0.0 if restart == "the start" else time.time()
            if restart == "DevRestart":
                admin.DevRestart(second)
            elif restart == "RestartServer":
                admin.RestartServer()
            wait_until(lambda: states_of_all(proxies) == ["ON", "ON"], "both ON", STARTED, 0.05)
            try:
                wait_until(partial(read_again, restarted, since), "each State read", STARTED, 0.05)
            except AssertionError as exc:
                readings = [p.readings for p in proxies]
                raise AssertionError(f"after {restart}: {exc}; readings: {readings}") from None


def test_a_killed_scan_is_unfinished_not_an_alarm(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proxy, _ = writer
    published, key = a_long_scan_writing(writer, redis_server.url, tmp_path)
    proxy.kill_scan(key)
    # Asked flat out: between its writer's end and its end in the lists, the scan is
    # RUNNING still (it was UNKNOWN there: one run of make test in two hit it).
    wait_until(lambda: proxy.scan_state(key) != "RUNNING", "the scan ended", STARTED, 0)
    assert proxy.scan_state(key) == "UNFINISHED"
    # The watcher looks every 0.1 s: a state it would show is shown by then.
    wait_until(lambda: "0 scan(s) running" in proxy.status(), "the end seen", STARTED, 0.05)
    assert proxy.state() == tango.DevState.ON
    published.result(60)


def test_redis_away_while_writing_is_a_fault_until_it_answers(
    tango_database: EmbeddedTangoDatabase,
) -> None:
    with EmbeddedRedis(persistent=True) as redis_server:
        device = "test/nexuswriter/redisaway"
        define(tango_database, device, "away", redis_url=redis_server.url, lease_ttl="1")
        with start_service(tango_database, device):
            proxy = tango.DeviceProxy(device)
            wait_for_state(proxy, tango.DevState.ON)
            redis_server.halt()
            assert "Redis unreachable" in wait_for_state(proxy, tango.DevState.FAULT)
            redis_server.resume()
            wait_for_state(proxy, tango.DevState.ON)


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"session": ""}, "session is not set"),
        ({"inactivity_timeout": "soon"}, "inactivity_timeout 'soon' is not a number"),
        ({"lease_ttl": "inf"}, "lease_ttl 'inf' is not a positive, finite number"),
        ({"compression": "lzma"}, "compression 'lzma' is not one of bitshuffle, gzip, none"),
    ],
)
def test_a_bad_property_faults_its_device_and_spares_the_server(
    tango_database: EmbeddedTangoDatabase,
    redis_server: EmbeddedRedis,
    properties: dict[str, str],
    reason: str,
) -> None:
    number = next(_writers)
    server, bad, good = f"bad{number}", f"test/bad/{number}", f"test/good/{number}"
    extra = {name: value for name, value in properties.items() if name != "session"}
    define(tango_database, bad, f"s{number}", server, redis_url=redis_server.url, **extra)
    define(tango_database, good, f"s{number}", server, redis_url=redis_server.url)
    if "session" in properties:  # register always sets it: spoil it afterwards
        tango_database.database().put_device_property(bad, {"session": [properties["session"]]})
    with start_service(tango_database, bad, server):
        assert reason in wait_for_state(tango.DeviceProxy(bad), tango.DevState.FAULT)
        wait_for_state(tango.DeviceProxy(good), tango.DevState.ON)  # same server: unharmed
        with pytest.raises(tango.DevFailed, match="correct it, then run Init"):
            tango.DeviceProxy(bad).start()
        assert tango.DeviceProxy(bad).state() == tango.DevState.FAULT


def test_a_running_scan_shows_its_progress_and_url(
    writer: tuple[tango.DeviceProxy, str], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    published = in_plain_thread(publish, redis_server.url, session, tmp_path, "loopscan 40 0.05")

    def running() -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], json.loads(proxy.scans_running_json))

    wait_until(
        lambda: any(s["points"] and s["url"] for s in running()),
        "some points written",
        STARTED,
        0.02,
    )
    (scan,) = running()
    assert scan["npoints"] == 40 and 0 < scan["points"] <= 40
    assert scan["url"].endswith("::/scan_0001")
    wait_until(lambda: proxy.latency_p99 is not None, "a latency", STARTED, 0.02)
    assert 0 < proxy.latency_p50 <= proxy.latency_p99 < 5
    assert proxy.events_received >= proxy.events_processed > 0
    published.result(60)
    wait_until(lambda: running() == [], "the scan ended", STARTED, 0.05)
    # The ended scan's events stay counted; nothing waits; no scan runs to have a latency.
    # (Figures come from the snapshot, taken every 0.1 s: wait for the one with the end.)
    wait_until(lambda: statistics(proxy)["writer"]["recent"], "the end seen", STARTED, 0.05)
    (ended,) = statistics(proxy)["writer"]["recent"]
    assert proxy.events_received == proxy.events_processed == ended["events_received"] > 40
    assert proxy.queue_depth == 0
    assert proxy.latency_p50 is None and proxy.latency_p99 is None  # quality INVALID


def written(proxy: tango.DeviceProxy, key: str) -> bool:
    """Whether scan ``key`` is written (not yet if the writer has not seen it yet: a
    publication can end before the writer reads its announcement)."""
    try:
        return bool(proxy.scan_state(key) == "OFF")
    except tango.DevFailed as failed:
        if failed.args[0].reason == "NexusWriter_UnknownScan":
            return False
        raise


def test_the_service_restarted_goes_on_writing_its_session(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    device = "test/nexuswriter/restarted"
    define(tango_database, device, "restarted", redis_url=redis_server.url, roots=str(tmp_path))
    keys = []
    for _ in range(2):
        with start_service(tango_database, device):  # stopped by SIGTERM at the end
            proxy = tango.DeviceProxy(device)
            wait_for_state(proxy, tango.DevState.ON)
            (key,) = publish(redis_server.url, "restarted", tmp_path, "loopscan 3 0.001")
            wait_until(partial(written, proxy, key), "the scan written", STARTED, 0.05)
            keys.append(key)
    assert keys[0] != keys[1]


def test_a_key_tango_cannot_carry_is_shown_escaped_and_spares_the_others(
    writer: tuple[tango.DeviceProxy, str],
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The protocol wants keys of [A-Za-z0-9_.-]; a publisher that does not obey still has
    its scan written, shown with backslash escapes (Tango strings are Latin-1), and the
    scans after it go on being shown."""
    proxy, session = writer
    wait_for_state(proxy, tango.DevState.ON)
    seen: list[Any] = []
    with subscribed("scheduler", proxy.name(), seen.append):
        monkeypatch.setattr("nexus_writer.protocol.publisher.secrets.token_hex", lambda n: "Ω-é")
        (odd,) = publish(redis_server.url, session, tmp_path, "loopscan 3 0.001")
        monkeypatch.undo()
        (plain,) = publish(redis_server.url, session, tmp_path, "loopscan 3 0.001")
        assert odd.endswith("-Ω-é")
        shown = odd.encode("latin-1", "backslashreplace").decode("latin-1")
        assert shown.endswith("-\\u03a9-é")
        wait_until(partial(written, proxy, plain), "the next scan written", STARTED, 0.05)
        assert proxy.scan_state(shown) == "OFF"
        assert proxy.scan_state(odd.encode("ascii", "backslashreplace").decode()) == "OFF"
        assert proxy.scan_url(shown).endswith("::/scan_0001")
        # In the order they ended: the second scan may be written first (scans are
        # written concurrently), as a run of the tango tests here once showed.
        assert sorted(e["key"] for e in json.loads(proxy.recent_scans)) == sorted([odd, plain])
        wait_until(lambda: len(seen) >= 5, "every start and end pushed", STARTED, 0.05)
    lists = [list(e.attr_value.value or []) for e in seen if not e.err]
    assert [shown] in lists and [plain] in lists and lists[-1] == []


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "Kill"])
def test_the_service_stops_cleanly_and_says_so(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, how: str
) -> None:
    """Stopped as an operator stops it, the server exits 0 saying "stopped", without the
    "unforseen exception" PyTango prints after any gevent server's stop."""
    device = f"test/nexuswriter/stop{how.lower()}"
    define(tango_database, device, device.replace("/", "-"), redis_url=redis_server.url)
    instance = device.replace("/", "_")
    process = subprocess.Popen(
        [str(SERVICE), instance, "-ORBendPoint", "giop:tcp:127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **server_env(), "TANGO_HOST": tango_database.tango_host},
    )
    try:
        proxy = tango.DeviceProxy(device)
        wait_until(partial(answers, proxy), f"{device} answers", STARTED, 0.05)
        wait_for_state(proxy, tango.DevState.ON)
        if how == "Kill":
            tango.DeviceProxy(f"dserver/NexusWriterService/{instance}").kill()
        else:
            process.send_signal(getattr(signal, how))
        output = process.communicate(timeout=STARTED)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"NexusWriterService {instance}: stopped" in output
    assert "Exiting" not in output and "exception" not in output.lower(), output


@pytest.mark.timeout(180)
def test_the_service_waits_for_its_tango_calls_before_tango_s_cleanup(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis
) -> None:
    """A followed device hung (its server stopped) through a few Inits, then SIGTERM: the
    subscriptions to it were still being made (each call waits for Tango's timeout). The
    last device to stop waits for them before Tango's cleanup starts: Tango's cleanup then
    ends (omniORB's shutdown waited for good with the calls still in flight, and a call
    returning in the middle of it crashed the server: SIGSEGV, on 3.13 mostly)."""
    output, status = stop_with_a_hung_follower(
        tango_database, redis_server, exit_grace=90, own_state=False
    )
    assert status == 0, output
    assert "waiting up to 90.0 s for the followed attributes' Tango calls" in output, output
    assert "NexusWriterService test_nexuswriter_exit: stopped" in output, output
    assert "exiting anyway" not in output, output
    assert "Traceback" not in output, output  # a second look's failed read says it in a line


def test_the_service_exits_when_its_tango_calls_outlast_the_grace(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis
) -> None:
    """As above, the device following its own State too, with ``--exit-grace 2``, shorter
    than the calls to the hung device take: the service exits within 2 s of its last
    device's stop, with status 0, and says why, without starting Tango's cleanup. (Or at
    once, when one of those calls is a subscription's first read of the device's own State
    that carries the device's deletion, and so waits for the shutdown that waits for it.)"""
    output, status = stop_with_a_hung_follower(
        tango_database, redis_server, exit_grace=2, own_state=True
    )
    assert status == 0, output
    assert (
        "the followed attributes' Tango calls did not return within 2.0 s of the last "
        "device's stop: exiting anyway"
        in output
        or "a followed attribute's Tango call waits for this shutdown" in output
    ), output
    assert "test_nexuswriter_exit: stopped" not in output, output


def stop_with_a_hung_follower(
    tango_database: EmbeddedTangoDatabase,
    redis_server: EmbeddedRedis,
    exit_grace: float,
    own_state: bool,
) -> tuple[str, int]:
    """A NexusWriter following test/frozen/1/position (and its own State); once they are
    read, the frozen device's server is stopped (SIGSTOP), the NexusWriter gets five Inits
    (each life subscribes anew) and the service SIGTERM. Its output and exit status."""
    tango_database.add_device("rogue_devices/frozen", "HwDevice", "test/frozen/1")
    device = "test/nexuswriter/exit"
    followed = ["test/frozen/1/position"] + ([f"{device}/State"] if own_state else [])
    define(tango_database, device, "exit", redis_url=redis_server.url, attributes=followed)
    with tango_database.start_server(
        DEVICES, "frozen", env=server_env(POSITION_PERIOD="0.05")
    ) as frozen:
        process = subprocess.Popen(
            [str(SERVICE), "test_nexuswriter_exit", "--exit-grace", str(exit_grace), *LOOPBACK],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server_env(), "TANGO_HOST": tango_database.tango_host},
        )
        assert frozen.pid is not None
        try:
            proxy = tango.DeviceProxy(device)
            wait_until(partial(answers, proxy), f"{device} answers", STARTED, 0.05)
            wait_for_state(proxy, tango.DevState.ON)
            wait_until(
                lambda: all(r["time"] for r in json.loads(proxy.readings).values()),
                "both attributes read",
                STARTED,
                0.05,
            )
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                for _ in range(5):
                    proxy.Init()
                process.send_signal(signal.SIGTERM)
                output = process.communicate(timeout=exit_grace + STARTED)[0].decode()
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return output, process.returncode


def answers(proxy: tango.DeviceProxy) -> bool:
    try:
        proxy.ping()
    except tango.DevFailed:
        return False
    return True


def test_a_frozen_redis_is_a_fault_and_the_device_answers_meanwhile(
    tango_database: EmbeddedTangoDatabase, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Redis stopped (SIGSTOP: connections open, no answer) for longer than a blocking
    read's grace: every read of the device is answered at once from its snapshots, the
    state says FAULT, and the device writes again once Redis answers."""
    device = "test/nexuswriter/frozenredis"
    define(tango_database, device, "frozen", redis_url=redis_server.url, lease_ttl="1")
    assert redis_server.pid is not None
    with start_service(tango_database, device):
        proxy = tango.DeviceProxy(device)
        wait_for_state(proxy, tango.DevState.ON)
        every = list(proxy.get_attribute_list())
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            began, slowest, states = time.monotonic(), 0.0, set()
            while time.monotonic() - began < 8:  # beyond XREAD's 5 s of grace
                asked = time.monotonic()
                proxy.read_attributes(every)  # a DevFailed (3 s client timeout) fails it
                states.add(proxy.state())
                slowest = max(slowest, time.monotonic() - asked)
                gevent.sleep(0.1)
            status = proxy.status()
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert slowest < 1.0
        assert tango.DevState.FAULT in states and "writing pauses" in status
        wait_for_state(proxy, tango.DevState.ON)
        (key,) = publish(redis_server.url, "frozen", tmp_path, "loopscan 3 0.001")
        wait_until(partial(written, proxy, key), "a scan written after", STARTED, 0.05)


def test_tangos_per_request_hooks_are_not_sent_into_the_hub() -> None:
    """PyTango runs these in the hub of a green device unless marked __access_wrapped__;
    there, each request would hold the device monitor while it waits for a busy hub."""
    for name in ("always_executed_hook", "read_attr_hardware", "dev_state", "dev_status"):
        assert not hasattr(getattr(NexusWriter, name), "__wrapped__"), name  # as written
    assert hasattr(NexusWriter.init_device, "__wrapped__")  # what PyTango does otherwise

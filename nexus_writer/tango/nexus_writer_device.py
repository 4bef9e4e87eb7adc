"""NexusWriter: the Tango device that writes one session, behind ``NexusWriterService``.

.. important::
   A gevent green-mode device: its life cycle and its commands run in the server's main
   hub, and so do the session's :class:`~nexus_writer.service.WriterService` (a greenlet
   of that hub, as under ``nexus-writer run``), the watcher greenlet, which alone computes
   the state, and the relay greenlet, which alone changes the scan lists. The server runs
   with ``SerialModel.BY_DEVICE`` (set by ``init_device``, for the whole process): every
   request holds the device monitor, and State, Status and change events are set and
   pushed under it by the device's :class:`~nexus_writer.tango.event_pusher.EventPusher`
   thread, never in the hub (why: that module). Attribute reads run in the Tango thread
   of each request, never in the hub: they read snapshots (replaced whole by the hub or
   the consumer thread, or copied in one step) and never wait for Redis, a disk or the
   hub. Commands never wait for Redis or a disk either, except ``Init``, which waits for
   the service to close its scans and give its lease back (bounded: STOP_TIMEOUT, and
   the Redis socket timeout).

States: ON while the device writes its session, STANDBY while another service does (a
writer pair), INIT until Redis answers, CLOSE while ``stop`` closes the running scans, OFF
once stopped, FAULT with the reason (Redis unreachable, a root unusable, a bad property),
ALARM while the last scan end failed for good; Status says it in words. docs/operations.md
describes the properties and commands.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, cast

import gevent
import gevent.event
import redis
from tango import (
    AttrQuality,
    AttrWriteType,
    DevError,
    DevFailed,
    DevState,
    ErrSeverity,
    GreenMode,
    LatestDeviceImpl,
    SerialModel,
    Util,
)
from tango.server import Device, attribute, command, device_property

from nexus_writer.lease import DEFAULT_TTL
from nexus_writer.nexus.options import Compression, WriterOptions
from nexus_writer.nexus.readings import Reading
from nexus_writer.protocol import DEFAULT_PREFIX
from nexus_writer.redis_client import connect
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.service import Role, ServiceStatistics, WriterService
from nexus_writer.session_writer import ScanEvent
from nexus_writer.subscriber import State
from nexus_writer.tango.event_pusher import EventPusher, Shown
from nexus_writer.tango.exit_watchdog import WATCHDOG, exit_now
from nexus_writer.tango.followed_attributes import FollowedAttributes, end_all
from sync_primitives import Queue

_log = logging.getLogger(__name__)

#: Seconds between two looks of the watcher at the service.
WATCH_PERIOD = 0.1
#: Finished scans kept for recent_scans, scan_state and scan_url.
RECENT_SCANS = 100
#: Seconds between two looks at whether the server has finished starting.
SERVER_UP_POLL = 0.1
#: Seconds the server's shutdown waits for the events given before it to be pushed.
LAST_EVENTS = 2.0

#: Devices of this process between init_device and delete_device (the server's hub): the
#: last one to stop at the server's shutdown ends the followed attributes' Tango calls.
_started_devices = 0


def _uncount() -> int:
    """One device fewer between init_device and delete_device: how many are left."""
    global _started_devices
    _started_devices = max(0, _started_devices - 1)
    return _started_devices


#: A number read from the snapshot: (value, time, quality), as Tango attributes return it.
Figure = tuple[float, float, AttrQuality]


def tango_text(text: str) -> str:
    """``text`` as a Tango string can carry it: Tango strings are Latin-1, so any other
    character becomes a backslash escape (``Ω`` is ``\\u03a9``). Everything the device
    shows that a publisher or a file system named (scan keys, file names, reasons) goes
    through it: pushing a string Latin-1 cannot encode takes the whole server down."""
    return text.encode("latin-1", "backslashreplace").decode("latin-1")


def same_key(key: str, given: str) -> bool:
    """Whether a client's ``given`` names scan ``key``: as it is, as Tango shows it, or as
    the commands' messages name it (ASCII, with backslash escapes)."""
    return given in (key, tango_text(key), key.encode("ascii", "backslashreplace").decode())


def refuse(reason: str, why: str) -> NoReturn:
    """Raise the DevFailed of a command that cannot apply: ``reason`` one of the REASONS,
    ``why`` the description (a client sees both as they are)."""
    error = DevError()
    error.reason, error.desc, error.origin = reason, why, "NexusWriter"
    error.severity = ErrSeverity.ERR
    raise DevFailed(error)


#: The reasons of the DevFailed that the commands raise (docs/operations.md).
UNKNOWN_SCAN = "NexusWriter_UnknownScan"  #: no such scan, running or among the recent
SCAN_ENDED = "NexusWriter_ScanEnded"  #: stop_scan, kill_scan of a scan that has ended
NO_ENTRY = "NexusWriter_NoEntry"  #: scan_url of a scan without an entry
WRONG_STATE = "NexusWriter_WrongState"  #: start while running, stopping, or misconfigured


class ConfigurationError(ValueError):
    """A device property is unusable; the message names it."""


def seconds(name: str, text: str) -> float:
    """A property in seconds.

    Raises:
        ConfigurationError: not a positive, finite number (the message names it).
    """
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(f"{name} {text!a} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{name} {text!a} is not a positive, finite number of seconds")
    return value


def writer_options(roots: list[str], compression: str, inactivity_timeout: float) -> WriterOptions:
    """The writer's options from the device's properties.

    Raises:
        ConfigurationError: a root that is not an absolute, writable directory, or an
            unknown compression.
    """
    checked = []
    for root in roots:
        path = Path(root)
        if not path.is_absolute():
            raise ConfigurationError(f"root {root!a} is not an absolute path")
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            raise ConfigurationError(f"root {root} is not a writable directory")
        checked.append(path.resolve())
    try:
        kind = Compression(compression)
    except ValueError:
        known = ", ".join(c.value for c in Compression)
        raise ConfigurationError(f"compression {compression!a} is not one of {known}") from None
    return WriterOptions(
        roots=tuple(checked), compression=kind, inactivity_timeout=inactivity_timeout
    )


def state_of(
    stats: ServiceStatistics | None,
    problem: str | None,
    running: int = 0,
    last_end: ScanEvent | None = None,
) -> tuple[DevState, str]:
    """The device's state and status from the service's statistics (None: not running),
    the device's own problem (a bad property), if any, the number of scans running and
    the last scan end (as ``scans_running`` and ``recent_scans`` show them)."""
    if problem is not None:
        return DevState.FAULT, problem
    if stats is None or stats.role == Role.STOPPED.value:
        return DevState.OFF, "Stopped: start writes the session again."
    if stats.stopping:
        return DevState.CLOSE, "Stopping: the running scans close with what they received."
    if stats.problem is not None:
        return DevState.FAULT, stats.problem
    if stats.role == Role.STARTING.value:
        return DevState.INIT, f"Starting: reaching Redis for session {stats.session}."
    return _standby_or_active(stats, running, last_end)


def _standby_or_active(
    stats: ServiceStatistics, running: int, last_end: ScanEvent | None
) -> tuple[DevState, str]:
    if stats.role == Role.STANDBY.value:
        holder = stats.holder or "another service"
        return DevState.STANDBY, f"Standby: session {stats.session} is written by {holder}."
    # A scan that failed for good, not one left UNFINISHED (stop_scan, kill_scan, stop):
    # that one is written again when a service next takes the session.
    if last_end is not None and last_end.state == State.FAULT.value:
        return DevState.ALARM, (
            f"Writing session {stats.session}; the last scan, {last_end.key}, failed: "
            f"{last_end.reason}"
        )
    return DevState.ON, f"Writing session {stats.session}: {running} scan(s) running."


def snapshot(**options: Any) -> Any:
    """A read-only attribute read outside the hub (see NexusWriter's attributes)."""
    return attribute(read_green_mode=False, **options)


class NexusWriter(Device):
    """Writes the scans of one session as NeXus/HDF5 files."""

    green_mode = GreenMode.Gevent

    # Every property is text or a list of text, checked by the device itself: a missing
    # or malformed one makes this device FAULT with the reason. (Tango's own checks,
    # mandatory=True or a numeric dtype, raise before init_device: the whole server exits.)
    session = device_property(dtype=str, default_value="", doc="the session to write")
    redis_url = device_property(
        dtype=str, default_value="", doc="redis://, rediss:// or unix:// URL of the scans' Redis"
    )
    prefix = device_property(dtype=str, default_value=DEFAULT_PREFIX, doc="Redis key prefix")
    roots = device_property(
        dtype=(str,), default_value=[], doc="files only below these directories (none: anywhere)"
    )
    compression = device_property(
        dtype=str, default_value=Compression.BITSHUFFLE_LZ4.value, doc="compression of datasets"
    )
    inactivity_timeout = device_property(
        dtype=str, default_value="600", doc="seconds: close a scan whose publisher is silent"
    )
    lease_ttl = device_property(
        dtype=str, default_value=str(DEFAULT_TTL), doc="seconds a dead writer keeps the session"
    )
    attributes = device_property(
        dtype=(str,),
        default_value=[],
        doc="Tango attributes (device/attribute) whose latest change event is stored in "
        "each scan's entry, under instrument/tango",
    )

    # -- life cycle (the hub) -----------------------------------------------------------

    def init_device(self) -> None:
        global _started_devices
        _started_devices += 1  # first: a delete_device follows even if this raises
        super().init_device()
        # PyTango runs green servers with NO_SYNC, where a pushed event and a read of the
        # same attribute corrupt each other (event_pusher.py): every request takes the
        # device monitor instead, and the EventPusher pushes under it.
        Util.instance().set_serial_model(SerialModel.BY_DEVICE)
        self._service: WriterService | None = None
        self._runner: gevent.Greenlet | None = None
        self._client: redis.Redis | None = None
        self._problem: str | None = None
        self._snapshot: ServiceStatistics | None = None
        # Scan events: put by the session writer (its hub, or its consumer thread), taken
        # in this hub by the relay, the only one to change the lists and push their events.
        self._scan_events: Queue[ScanEvent] = Queue()
        self._running_scans: dict[str, ScanEvent] = {}
        self._look_now = gevent.event.Event()  # a scan started or ended: show it at once
        self._shown: Shown | None = None  # the state and status computed last
        if getattr(self, "_events", None) is None:  # one for the device's life, Init or not
            self._events = EventPusher(self, lambda: self._shown)
        else:  # Init: the lists start empty, and say so
            self._events.push("scans_running", [])
            self._events.push("recent_scans", "[]")
        self._recent_scans: deque[ScanEvent] = deque(maxlen=RECENT_SCANS)
        for name in ("State", "Status", "scans_running", "recent_scans"):
            self.set_change_event(name, True, False)
        names = [str(n).strip() for n in self.attributes or [] if str(n).strip()]
        self._followed = FollowedAttributes(self.get_name(), names)
        self._follower = gevent.spawn(self._follow_once_up, self._followed)
        self._start_service()
        self._watcher = gevent.spawn(self._watch)
        self._relay = gevent.spawn(self._relay_scans)

    def delete_device(self) -> None:
        shutting_down = Util.instance().is_svr_shutting_down()
        if not shutting_down:
            try:
                self._stop()
            finally:
                _uncount()
            return
        WATCHDOG.stopping()  # the process ends even if Tango's cleanup does not
        try:
            try:
                self._stop(shutting_down=True)
            finally:
                # Uncounted once stopped, not before: two deletions can overlap in the hub
                # (one carried by a request's thread), and the last to finish ends all.
                if _uncount() == 0:
                    why = end_all(WATCHDOG.grace)
                    if why is not None:  # Tango's cleanup with those calls running could crash
                        exit_now(why)
        finally:
            WATCHDOG.stopped()

    def _stop(self, shutting_down: bool = False) -> None:
        """delete_device: an Init or a restart of the device, or the server's shutdown."""
        self._watcher.kill()
        self._relay.kill()
        self._follower.kill()
        self._followed.retire(final=shutting_down)  # the next Init takes its subscriptions over
        self._stop_service()
        if self._runner is not None:
            self._runner.join()  # the service closes its scans (bounded: STOP_TIMEOUT)
            self._runner = None
        while self._scan_events.qsize():  # the ends of the scans it closed, the relay's
            self._show_scan(self._scan_events.get_nowait())  # no more: shown, pushed
        if shutting_down and not self._events.close(LAST_EVENTS):
            _log.warning("%s: events given before the shutdown were not all pushed", self)
        if self._client is not None:
            self._client.close()
            self._client = None

    @staticmethod
    def _follow_once_up(followed: FollowedAttributes) -> None:
        """Start following the attributes once the server is up: subscribing to a device of
        this server while it starts (or restarts: RestartServer) can fail for good
        (followed_attributes.py). Tango gives no event for the end of a RestartServer
        (server_init_hook is called after a start only), so look every SERVER_UP_POLL."""
        while Util.instance().is_svr_starting():
            gevent.sleep(SERVER_UP_POLL)
        followed.start()

    def _start_service(self) -> None:
        try:
            for name in ("session", "redis_url"):
                if not str(getattr(self, name) or "").strip():
                    raise ConfigurationError(f"{name} is not set")
            options = writer_options(
                list(self.roots or []),
                self.compression,
                seconds("inactivity_timeout", self.inactivity_timeout),
            )
            lease_ttl = seconds("lease_ttl", self.lease_ttl)
            self._client = connect(self.redis_url)
            self._service = WriterService(
                self._client,
                self.session,
                options,
                prefix=self.prefix,
                since="0-0",
                lease_ttl=lease_ttl,
                on_scan=self._scan_events.put,
                readings=self._take_readings if self._followed else None,
                name=f"device {self.get_name()}",
            )
        except (ConfigurationError, ValueError) as exc:
            if self._client is not None:  # made before WriterService refused the session
                self._client.close()
                self._client = None
            self._problem = f"Bad property: {exc}"
            _log.error("%s: %s", self.get_name(), self._problem)
            return
        self._problem = None
        self._runner = gevent.spawn(self._service.run)

    def _take_readings(self) -> dict[str, dict[str, Reading]]:
        """The readings as they are now (called from the scans' consumer thread: a copy,
        made under the GIL, of a dict only this hub changes)."""
        return {"tango": self._followed.readings()}

    def _stop_service(self) -> None:
        """Ask the service to stop; it closes its scans in its own greenlet."""
        if self._service is not None:
            self._service.stop()

    def _running(self) -> bool:
        return self._runner is not None and not self._runner.dead

    def _watch(self) -> None:
        """The one greenlet that looks at the service every WATCH_PERIOD (and at once at
        each scan start and end)."""
        failure: str | None = None
        while True:
            try:
                self._look()
                failure = None
            except Exception as exc:  # never silent, never the end of the state's events
                if repr(exc) != failure:  # once per failure, not ten times a second
                    failure = repr(exc)
                    _log.exception("%s: cannot show the state", self.get_name())
            self._look_now.wait(WATCH_PERIOD)
            self._look_now.clear()

    def _look(self, in_command: bool = False) -> None:
        """Take the service's snapshot and compute the state; the EventPusher sets it and
        pushes its change events if it changed (in this hub: the watcher, and the
        commands that change the state, ``in_command``: changed when they return)."""
        service = self._service
        running = service is not None and self._running()
        self._snapshot = service.statistics() if service is not None and running else None
        last_end = self._recent_scans[-1] if self._recent_scans else None
        state, status = state_of(self._snapshot, self._problem, len(self._running_scans), last_end)
        now = (state, tango_text(status))
        changed, self._shown = now != self._shown, now
        if in_command:
            self._events.show_in_command()
        elif changed:
            self._events.show()

    def _relay_scans(self) -> None:
        """Every scan start and end, in order, to the scan lists and their change events."""
        while True:
            event = self._scan_events.get()  # waits cooperatively in this hub
            try:
                self._show_scan(event)
            except Exception:  # the lists are right; the next event pushes them again
                _log.exception("%s: cannot push the scan lists", self.get_name())

    def _show_scan(self, event: ScanEvent) -> None:
        if event.kind == "started":
            self._running_scans[event.key] = event
        else:
            self._running_scans.pop(event.key, None)
            self._recent_scans.append(event)
            self._events.push("recent_scans", self._recent_json())
        self._events.push("scans_running", self._running_keys())
        self._look_now.set()

    def _running_keys(self) -> list[str]:
        # list(): one step under the GIL (attribute reads run in Tango's threads)
        return [tango_text(key) for key in list(self._running_scans)]

    def _recent_json(self) -> str:
        return json.dumps([asdict(e) for e in list(self._recent_scans)])

    def _scan_writer(self, key: str) -> NexusScanWriter | None:
        writer = self._service.writer() if self._service is not None else None
        if writer is None:
            return None
        return next((w for w in writer.scans() if same_key(w.key, key) and not w.done()), None)

    def _known(self, key: str) -> tuple[NexusScanWriter | None, ScanEvent | None]:
        """The running writer of scan ``key``, or its last end; neither while its writer
        has ended and its end is on its way to the lists (it is still in
        ``scans_running``: the lists change in the hub, in order, a moment later).

        Raises:
            DevFailed: UNKNOWN_SCAN, no such scan, running or recent (the message lists what
                to use).
        """
        running = self._scan_writer(key)
        ended = next((e for e in reversed(self._recent_scans) if same_key(e.key, key)), None)
        listed = any(same_key(k, key) for k in list(self._running_scans))
        if running is None and ended is None and not listed:
            refuse(
                UNKNOWN_SCAN,
                f"no scan {key!a} is running or among the last {RECENT_SCANS} finished: "
                "see scans_running and recent_scans",
            )
        return running, ended

    # -- Tango's hooks of every request -------------------------------------------------
    #
    # PyTango runs these in the hub for a green device, for every read, every command,
    # while the request holds the device monitor: each request would then wait for the
    # hub, busy with the scans, and hold up all the others meanwhile. The device has
    # nothing to do in them, so they run where the request is (PyTango leaves a method
    # marked __access_wrapped__ as it is).

    def always_executed_hook(self) -> None:
        pass

    def read_attr_hardware(self, attr_list: list[int]) -> None:
        pass

    # As the EventPusher set them; LatestDeviceImpl's are Tango's own (Device's hop into
    # the hub).
    def dev_state(self) -> DevState:
        return cast(DevState, LatestDeviceImpl.dev_state(self))

    def dev_status(self) -> str:
        return cast(str, LatestDeviceImpl.dev_status(self))

    always_executed_hook.__access_wrapped__ = True  # type: ignore[attr-defined]
    read_attr_hardware.__access_wrapped__ = True  # type: ignore[attr-defined]
    dev_state.__access_wrapped__ = True  # type: ignore[attr-defined]
    dev_status.__access_wrapped__ = True  # type: ignore[attr-defined]

    # -- attributes: snapshots only -----------------------------------------------------
    #
    # Read in the Tango thread that serves the request (read_green_mode=False), not in the
    # hub: a read then waits neither for the hub, busy with the scans' Redis listeners,
    # nor for a hop into it and back per attribute. Each reads values that the hub or the
    # consumer thread replace whole (the snapshot), or copies a container in one step
    # under the GIL (list(), dict()) before it looks inside.

    @snapshot(dtype=(str,), max_dim_x=100_000, doc="keys of the scans being written")
    def scans_running(self) -> list[str]:
        return self._running_keys()

    @snapshot(dtype=str, doc="JSON: the scans being written, with their progress and URL")
    def scans_running_json(self) -> str:
        return json.dumps([self._running_info(key) for key in list(self._running_scans)])

    def _running_info(self, key: str) -> dict[str, object]:
        writer = self._scan_writer(key)
        if writer is None:  # ended a moment ago: its end is on its way to the relay
            return {"key": key, "state": "RUNNING", "points": None, "npoints": None, "url": None}
        points, npoints = writer.progress()
        stats = writer.statistics()
        return {
            "key": key,
            "state": stats.state,
            "points": points,
            "npoints": npoints,
            "url": writer.url,
            "latency_p99": stats.latency_p99,
            "queue_depth": stats.queue_depth,
        }

    @snapshot(dtype=str, doc="JSON: the last finished scans, oldest first")
    def recent_scans(self) -> str:
        return self._recent_json()

    @snapshot(dtype=str, access=AttrWriteType.READ, doc="active, standby, starting, stopped")
    def role(self) -> str:
        return self._snapshot.role if self._snapshot is not None else Role.STOPPED.value

    @snapshot(dtype=str, doc="JSON: the attributes property's latest readings, by name")
    def readings(self) -> str:
        readings = self._followed.readings()
        return json.dumps({name: asdict(r) for name, r in readings.items()}, default=repr)

    # The writer's figures, as numbers that Tango clients can plot and archive (INVALID
    # while the device does not write its session).

    @snapshot(dtype="int64", doc="channel events received since the writer started")
    def events_received(self) -> Figure:
        return self._figure("events_received")

    @snapshot(dtype="int64", doc="of events_received, written (or given up with a channel)")
    def events_processed(self) -> Figure:
        return self._figure("events_processed")

    @snapshot(dtype="int64", doc="events received and not written yet")
    def lag(self) -> Figure:
        return self._figure("lag")

    @snapshot(dtype="int32", doc="batches waiting for a consumer, all running scans")
    def queue_depth(self) -> Figure:
        return self._figure("queue_depth")

    @snapshot(dtype=float, unit="s", format="%.4f", doc="latency p50, worst running scan")
    def latency_p50(self) -> Figure:
        return self._figure("latency_p50")

    @snapshot(dtype=float, unit="s", format="%.4f", doc="latency p99, worst running scan")
    def latency_p99(self) -> Figure:
        return self._figure("latency_p99")

    def _figure(self, name: str) -> Figure:
        """A figure of the session writer's snapshot, with its time, or INVALID."""
        writer = self._snapshot.writer if self._snapshot is not None else None
        value: float | None = None
        if writer is not None:
            value = (
                writer.events_received - writer.events_processed
                if name == "lag"
                else getattr(writer, name)
            )
        if value is None:
            return 0, time.time(), AttrQuality.ATTR_INVALID
        return value, time.time(), AttrQuality.ATTR_VALID

    @snapshot(dtype=str, doc="the service's statistics as JSON")
    def statistics_json(self) -> str:
        return self._statistics()

    def _statistics(self) -> str:
        return json.dumps(asdict(self._snapshot)) if self._snapshot is not None else "{}"

    # -- commands -----------------------------------------------------------------------

    @command
    def start(self) -> None:
        """Write the session again after ``stop`` (DevFailed while it runs or stops, or
        while a property is bad)."""
        if self._problem is not None:
            refuse(WRONG_STATE, f"{self._problem}: correct it, then run Init")
        if self._running():
            stopping = self._service is not None and self._service.statistics().stopping
            refuse(
                WRONG_STATE,
                f"the writer of session {self.session} is "
                + ("still stopping: try again" if stopping else "already running"),
            )
        if self._client is not None:
            self._client.close()
        self._start_service()
        self._look(in_command=True)

    @command
    def stop(self) -> None:
        """Stop writing: running scans close with what they received; a standby of the
        pair takes over. Stopping a stopped writer changes nothing."""
        self._stop_service()
        self._look(in_command=True)  # CLOSE (or OFF) when it returns

    @command(dtype_in=str, dtype_out=str, green_mode=False)  # reads snapshots: not in the hub
    def scan_state(self, key: str) -> str:
        """The state of scan ``key``: RUNNING, or how it ended (OFF: written, FAULT)."""
        running, ended = self._known(key)
        if running is not None or ended is None:  # running, or its end not yet listed
            return "RUNNING"
        return ended.state

    @command(dtype_in=str, dtype_out=str, green_mode=False)  # reads snapshots: not in the hub
    def scan_url(self, key: str) -> str:
        """``file::/entry`` of scan ``key`` (DevFailed until its entry exists)."""
        running, ended = self._known(key)
        url = running.url if running is not None else ended.url if ended is not None else None
        if url is None and ended is not None:
            refuse(NO_ENTRY, f"scan {key!a} ended ({ended.state}) without an entry")
        if url is None:
            refuse(NO_ENTRY, f"scan {key!a} has no entry yet")
        return tango_text(url)

    @command(dtype_in=str)
    def stop_scan(self, key: str) -> None:
        """Close scan ``key`` with what was received (DevFailed if it is not running)."""
        self._running_writer(key).stop()

    @command(dtype_in=str)
    def kill_scan(self, key: str) -> None:
        """Abandon scan ``key`` at once (DevFailed if it is not running)."""
        self._running_writer(key).kill()

    @command
    def purge_scans(self) -> None:
        """Forget the finished scans (recent_scans becomes empty)."""
        self._recent_scans.clear()
        self._events.push("recent_scans", self._recent_json())
        self._look(in_command=True)  # an ALARM has ended when it returns

    def _running_writer(self, key: str) -> NexusScanWriter:
        running, _ = self._known(key)
        if running is None:
            refuse(SCAN_ENDED, f"scan {key!a} is not running (it has ended)")
        return running

    @command(dtype_out=str, green_mode=False)  # reads a snapshot: not in the hub
    def statistics(self) -> str:
        """The service's statistics as JSON (the same as ``statistics_json``)."""
        return self._statistics()

"""The event monitor: what each device server's Tango event system did since the last look.

.. important::
   An :class:`EventMonitor` belongs to the thread that calls :meth:`EventMonitor.poll` or
   :meth:`EventMonitor.run`; each poll queries every server at once from a short-lived
   pool of OS threads of its own. The report functions are pure: plain data in, plain data
   or tables out.

Each device named is resolved to its server's admin device (``dserver/<server>/<instance>``;
several devices of one server make one entry). Every ``period`` seconds the monitor calls
``QueryEventSystem`` on all of them concurrently and prints, per server, what changed since
the previous snapshot: publishers and subscriptions that appeared or went, the counters that
moved (published events and the last pushed server counter; events processed, last received
server counter, callbacks, missed and discarded events). With ``perf`` it turns on
``EnableEventSystemPerfMon`` and prints the samples of each period as statistics tables
(each query drains the server's buffers of at most 256 samples a side), and turns it off
again when it ends, also on Ctrl-C or SIGTERM. A device with an attribute named
:data:`~nexus_writer.tango.STATISTICS_ATTRIBUTE` (a CallbackScheduler's statistics) has them
shown in its server's section. docs/tango-events.md says how to read the output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import tango
from rich.console import Console, Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .callback_scheduler import STATISTICS_ATTRIBUTE
from .subscription import describe
from .summary import Summary, summarize

_log = logging.getLogger(__name__)

#: Seconds a query may take before its server is reported unreachable for this period.
QUERY_TIMEOUT = 3.0
_TRL_PREFIX = re.compile(r"^tango://[^/]+/")

Reply = dict[str, Any]


class StopRequest:
    """A request to stop, made from any thread or from a signal handler.

    :meth:`set` takes no lock. A Python signal handler runs in the main thread between two
    of its bytecodes, perhaps while that thread holds a lock: a ``threading.Event``'s
    ``set()`` there waits for the lock its own thread holds, for ever (Ctrl-C pressed
    twice while :meth:`EventMonitor.run` waited did that, in about one run in ten of the
    test that does it). :meth:`wait` sleeps in ``poll`` on a pipe that :meth:`set` writes
    a byte to, so it wakes at once, from whichever thread or handler.

    A signal that arrives after :meth:`wait` has looked at the flag and before its
    ``poll`` begins has its Python handler run only once ``poll`` returns: make the pipe
    the signal wake-up descriptor (:meth:`wake_on_signals`, in the main thread) and the
    C-level handler writes to it at once.
    """

    def __init__(self) -> None:
        self._flag = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._closed = False
        self._closer = weakref.finalize(self, _close_pipe, self._read, self._write)

    def set(self) -> None:
        """Ask to stop; safe in a signal handler (no lock, a non-blocking write)."""
        self._flag = True
        if not self._closed:
            with suppress(OSError):  # the pipe full: a waiter is woken already
                os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for :meth:`set`; whether it was
        called (at once after :meth:`close`).

        As ``threading.Event.wait``: a negative or NaN ``timeout`` does not wait.
        """
        if timeout is not None and not timeout > 0:  # also NaN, which poll() refuses
            timeout = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        if not self._closed:
            poller.register(self._read, select.POLLIN)
        while not self._flag and not self._closed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            if poller.poll(None if remaining is None else remaining * 1000) and not self._flag:
                # A byte without the flag: a signal whose handler runs next, or a forked
                # child's set(). Drained, so that the next poll sleeps; the flag is looked at
                # again first, so a set() made meanwhile is not lost.
                with suppress(OSError):
                    os.read(self._read, 4096)
        return self._flag

    def wake_on_signals(self) -> Callable[[], None]:
        """Make the pipe this process's signal wake-up descriptor (main thread only);
        returns what restores the one before."""
        previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

        def restore() -> None:
            signal.set_wakeup_fd(previous)

        return restore

    def close(self) -> None:
        """Let the pipe go (a later :meth:`set` only sets the flag)."""
        self._closed = True
        self._closer()


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def short(name: str) -> str:
    """A stream or device name without its ``tango://host:port/`` prefix."""
    return _TRL_PREFIX.sub("", name)


# -- what changed -------------------------------------------------------------------------


@dataclass
class ServerReport:
    """What one server's event system did between two snapshots (plain data)."""

    admin: str
    devices: list[str]
    error: str | None = None
    new_publishers: dict[str, int] = field(default_factory=dict)
    removed_publishers: list[str] = field(default_factory=list)
    #: stream -> (before, after) of the last pushed server counter
    published: dict[str, tuple[int, int]] = field(default_factory=dict)
    new_subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed_subscriptions: list[str] = field(default_factory=list)
    #: (stream, counter name, before, after) for each counter that moved
    received: list[tuple[str, str, int, int]] = field(default_factory=list)
    not_connected: list[str] = field(default_factory=list)
    server_perf: dict[str, Summary | None] = field(default_factory=dict)
    client_perf: dict[str, Summary | None] = field(default_factory=dict)
    #: device -> its CallbackScheduler's statistics (the attribute's JSON), and the number
    #: of events each queue processed since the last snapshot
    schedulers: dict[str, dict[str, Any]] = field(default_factory=dict)


#: The counters of a subscription, with the words that follow them in the report.
SUBSCRIPTION_COUNTERS = {
    "event_count": "events processed",
    "server_counter": "last received server counter",
    "callback_count": "callbacks",
    "missed_event_count": "missed events",
    "discarded_event_count": "discarded events",
}


def compare(
    admin: str,
    devices: list[str],
    before: Reply | None,
    after: Reply,
    *,
    schedulers: Mapping[str, dict[str, Any]] | None = None,
    schedulers_before: Mapping[str, dict[str, Any]] | None = None,
) -> ServerReport:
    """The report of one server from two ``QueryEventSystem`` replies (``before`` None: the
    first snapshot, where everything is new)."""
    report = ServerReport(admin, devices)
    old_server = (before or {}).get("server") or {}
    new_server = after.get("server") or {}
    old_pub: dict[str, int] = old_server.get("event_counters") or {}
    new_pub: dict[str, int] = new_server.get("event_counters") or {}
    for stream, counter in new_pub.items():
        if stream not in old_pub:
            report.new_publishers[stream] = counter
        elif old_pub[stream] != counter:
            report.published[stream] = (old_pub[stream], counter)
    report.removed_publishers = [s for s in old_pub if s not in new_pub]

    old_client = (before or {}).get("client") or {}
    new_client = after.get("client") or {}
    old_sub: dict[str, dict[str, Any]] = old_client.get("event_callbacks") or {}
    new_sub: dict[str, dict[str, Any]] = new_client.get("event_callbacks") or {}
    for stream, counters in new_sub.items():
        if stream not in old_sub:
            report.new_subscriptions[stream] = counters
            continue
        for key in SUBSCRIPTION_COUNTERS:
            was, now = old_sub[stream].get(key), counters.get(key)
            if was != now and isinstance(was, int) and isinstance(now, int):
                report.received.append((stream, key, was, now))
    report.removed_subscriptions = [s for s in old_sub if s not in new_sub]
    report.not_connected = [str(x) for x in new_client.get("not_connected") or []]

    if new_server.get("perf") is not None:
        report.server_perf = server_performance(new_server["perf"])
    if new_client.get("perf") is not None:
        report.client_perf = client_performance(new_client["perf"])
    for device, stats in (schedulers or {}).items():
        old = {q["queue"]: q for q in (schedulers_before or {}).get(device, {}).get("queues", [])}
        queues = [{**q, "new": _since(q, old.get(q["queue"]))} for q in stats.get("queues", [])]
        report.schedulers[device] = {**stats, "queues": queues}
    return report


def _since(queue: Mapping[str, Any], before: Mapping[str, Any] | None) -> int:
    """Events a scheduler queue processed since the last snapshot (all it processed if its
    count went down: its server restarted meanwhile)."""
    processed = int(queue["processed"])
    earlier = int(before["processed"]) if before else 0
    return processed - earlier if processed >= earlier else processed


def server_performance(samples: Iterable[Mapping[str, Any]]) -> dict[str, Summary | None]:
    """Rows of the server table (micro-seconds): the gaps between pushes, the push times."""
    samples = list(samples)
    return {
        "Event gaps": _summary(samples, "micros_since_last_event"),
        "Push time": _summary(samples, "push_event_micros"),
    }


def client_performance(samples: Iterable[Mapping[str, Any]]) -> dict[str, Summary | None]:
    """Rows of the client table: gaps, sleep, latency (micro-seconds; the latency is from
    the server's push to the first callback's start), callbacks and wake-ups per event,
    and the processing time of each attribute's events."""
    samples = list(samples)
    kept = [s for s in samples if not s.get("discarded")]
    rows = {
        "Event gaps": _summary(samples, "micros_since_last_event"),
        "Sleep time": _summary(samples, "sleep_micros"),
        "Latency": _summary(kept, "first_callback_latency_micros"),
        "Callbacks called": _summary(kept, "callback_count"),
        "Wake count": _summary(samples, "wake_count"),
    }
    for attribute in sorted({str(s.get("attr_name") or "") for s in kept} - {""}):
        rows[f"{attribute} processing time"] = _summary(
            [s for s in kept if s.get("attr_name") == attribute], "process_micros"
        )
    return rows


def _summary(samples: list[Mapping[str, Any]], key: str) -> Summary | None:
    return summarize(float(s[key]) for s in samples if isinstance(s.get(key), (int, float)))


# -- tables -------------------------------------------------------------------------------

#: Rows whose values are counts, not micro-seconds.
COUNT_ROWS = {"Callbacks called", "Wake count"}


def render(moment: str, reports: list[ServerReport]) -> RenderableType:
    """One snapshot's reports, as a person reads them at a terminal."""
    parts: list[RenderableType] = [Rule(moment, characters="=")]
    for report in reports:
        devices = ", ".join(short(d) for d in report.devices)
        parts.append(Rule(f"{report.admin} (from {devices})", characters="-"))
        parts.extend(_sections(report))
    parts.append(Rule(moment, characters="="))
    return Group(*parts)


def _sections(report: ServerReport) -> Iterator[RenderableType]:
    if report.error:
        yield Text(f"! unreachable: {report.error}")
        return
    if report.new_publishers:
        yield _counters(
            "New publishers",
            [
                (s, f"{c} is the last pushed server counter")
                for s, c in report.new_publishers.items()
            ],
        )
    if report.removed_publishers:
        yield _counters("Removed publishers", [(s, "") for s in report.removed_publishers])
    if report.published:
        yield _counters(
            "Published events",
            [
                (s, _moved(a, b, "last pushed server counter"))
                for s, (a, b) in report.published.items()
            ],
        )
    if any(report.server_perf.values()):
        yield _performance("Server performance", report.server_perf)
    yield from _client_sections(report)


def _client_sections(report: ServerReport) -> Iterator[RenderableType]:
    if report.new_subscriptions:
        table = _table("New subscriptions", ["stream", *SUBSCRIPTION_COUNTERS.values()])
        for stream, counters in report.new_subscriptions.items():
            _add_row(table, short(stream), *(str(counters.get(k)) for k in SUBSCRIPTION_COUNTERS))
        yield table
    if report.removed_subscriptions:
        yield _counters("Removed subscriptions", [(s, "") for s in report.removed_subscriptions])
    if report.received:
        yield _counters(
            "Received events and callback changes",
            [(s, _moved(a, b, SUBSCRIPTION_COUNTERS[key])) for s, key, a, b in report.received],
        )
    if report.not_connected:
        yield _counters("Not connected", [(s, "") for s in report.not_connected])
    if any(report.client_perf.values()):
        yield _performance("Client performance", report.client_perf)
    for device, stats in report.schedulers.items():
        yield _scheduler(device, stats)


def _moved(before: int, after: int, words: str) -> str:
    return f"{before} -> {after} ({after - before:+d}) {words}"


def _table(title: str, columns: Iterable[str], show_header: bool = True) -> Table:
    table = Table(title=Text(title), title_justify="left", box=None, show_header=show_header)
    for i, name in enumerate(columns):
        table.add_column(Text(name), justify="left" if i == 0 and name else "right")
    return table


def _add_row(table: Table, *cells: str) -> None:
    """Cells as plain text: units such as ``[s]`` and names are not rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def _counters(title: str, rows: list[tuple[str, str]]) -> Table:
    table = _table(title, ["", ""], show_header=False)
    for stream, words in rows:
        _add_row(table, short(stream), words)
    return table


def _performance(title: str, rows: Mapping[str, Summary | None]) -> Table:
    table = _table(
        title, ["", "mean", "median", "count", "minimum", "maximum", "1%", "10%", "90%", "99%"]
    )
    for name, summary in rows.items():
        if summary is None:
            continue
        if name in COUNT_ROWS:
            unit, scale = "", 1.0
        else:
            unit, scale = _unit(summary.median)
        cells = [
            f"{summary.mean / scale:.2f}±{summary.error / scale:.2f}",
            f"{summary.median / scale:.2f}",
            str(summary.count),
            f"{summary.minimum / scale:.2f}",
            f"{summary.maximum / scale:.2f}",
            *(
                f"{summary.percentiles[p] / scale:.2f}" if p in summary.percentiles else ""
                for p in (1, 10, 90, 99)
            ),
        ]
        _add_row(table, f"{name} [{unit}]" if unit else name, *cells)
    return table


def _unit(micros: float) -> tuple[str, float]:
    """The unit that shows ``micros`` with a few digits before the point."""
    if micros >= 1e6:
        return "s", 1e6
    if micros >= 1e3:
        return "ms", 1e3
    return "µs", 1.0


def _scheduler(device: str, stats: Mapping[str, Any]) -> Table:
    table = _table(
        f"Callback scheduler of {short(device)}",
        [
            "queue",
            "new",
            "processed",
            "dropped",
            "discarded",
            "depth",
            "latency p50",
            "latency p99",
            "processing p50",
            "processing p99",
        ],
    )
    for queue in stats.get("queues", []):
        _add_row(
            table,
            short(str(queue["queue"])),
            f"{queue['new']:+d}",
            str(queue["processed"]),
            str(queue["dropped"]),
            str(queue["discarded"]),
            str(queue["depth"]),
            _seconds(queue.get("latency"), "median"),
            _seconds(queue.get("latency"), "99"),
            _seconds(queue.get("processing"), "median"),
            _seconds(queue.get("processing"), "99"),
        )
    return table


def _seconds(summary: Mapping[str, Any] | None, which: str) -> str:
    """A median or a percentile (``"99"``) of a Summary as JSON, in seconds, with a unit."""
    if not summary:
        return ""
    value = summary["median"] if which == "median" else summary["percentiles"].get(which)
    if value is None:  # too few samples for percentiles
        return ""
    unit, scale = _unit(float(value) * 1e6)
    return f"{float(value) * 1e6 / scale:.2f} {unit}"


#: Columns the tables may take: at a narrower terminal, or in a file, a table is never
#: squeezed into cut cells; the terminal wraps its lines instead.
MIN_WIDTH = 160


def wide_console() -> Console:
    """The console to print reports to: stdout, at least MIN_WIDTH columns wide."""
    return Console(width=max(Console().width, MIN_WIDTH))


# -- talking to the servers ---------------------------------------------------------------


@dataclass
class _Server:
    admin: str
    devices: list[str]
    proxy: tango.DeviceProxy | None = None
    device_proxies: dict[str, tango.DeviceProxy] = field(default_factory=dict)
    #: device -> whether it shows a scheduler's statistics (looked up once it answers)
    schedulers: dict[str, bool] = field(default_factory=dict)
    reply: Reply | None = None
    scheduler_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    perf_on: bool = False  #: on as far as we know (off again if the server restarted)
    perf_touched: bool = False  #: this monitor turned it on at least once


class EventMonitor:
    """Polls the event systems of the servers of ``devices``; see the module documentation."""

    def __init__(
        self,
        devices: list[str],
        *,
        perf: bool = False,
        jsonl: IO[str] | None = None,
        console: Console | None = None,
    ) -> None:
        """Each device is resolved to its server through the database, so a server that
        is not running yet is shown as unreachable until it runs.

        Raises:
            tango.DevFailed: a device is not defined in the database, or the database does
                not answer; the message names the device.
        """
        self.perf = perf
        self.jsonl = jsonl
        self.console = console or wide_console()
        #: Set to end :meth:`run` after the poll under way (Ctrl-C and SIGTERM, in main()).
        self.stopping = StopRequest()
        self._servers: dict[str, _Server] = {}
        for device in devices:
            proxy = tango.DeviceProxy(device)
            admin = admin_of(device, proxy)
            server = self._servers.setdefault(admin, _Server(short(admin), []))
            server.devices.append(device)
            server.device_proxies[device] = proxy
            if server.proxy is None:
                server.proxy = tango.DeviceProxy(admin)
                server.proxy.set_timeout_millis(int(QUERY_TIMEOUT * 1000))

    def poll(self) -> list[ServerReport]:
        """Query every server at once, print what changed since the last poll, and write
        the snapshot to ``jsonl``; the reports printed."""
        moment = datetime.now(timezone.utc).isoformat()
        servers = list(self._servers.values())
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            outcomes = list(pool.map(self._query, servers))
        reports = []
        for server, (reply, stats, error) in zip(servers, outcomes, strict=True):
            if error is not None or reply is None:
                reports.append(ServerReport(server.admin, server.devices, error=error))
                continue
            reports.append(
                compare(
                    server.admin,
                    server.devices,
                    server.reply,
                    reply,
                    schedulers=stats,
                    schedulers_before=server.scheduler_stats,
                )
            )
            server.reply, server.scheduler_stats = reply, stats
        self.console.print(render(moment, reports))
        if self.jsonl is not None:
            record = {
                "time": moment,
                "servers": {
                    s.admin: {
                        "devices": s.devices,
                        "reply": reply,
                        "schedulers": stats,
                        "error": error,
                    }
                    for s, (reply, stats, error) in zip(servers, outcomes, strict=True)
                },
            }
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        return reports

    def run(self, period: float, count: int | None = None) -> None:
        """Poll every ``period`` seconds, ``count`` times (None: until :attr:`stopping` is
        set, which Ctrl-C and SIGTERM do in :func:`main`); with ``perf``, performance
        monitoring is on meanwhile and off afterwards, however the run ends."""
        try:
            done = 0
            while count is None or done < count:
                started = time.monotonic()
                self.poll()
                done += 1
                if count is not None and done >= count:
                    break
                if self.stopping.wait(max(0.0, period - (time.monotonic() - started))):
                    break
        finally:
            self.close()

    def close(self) -> None:
        """Turn performance monitoring off wherever this monitor tried to turn it on, on
        all servers at once."""
        touched = [s for s in self._servers.values() if s.perf_touched and s.proxy is not None]
        if not touched:
            return
        with ThreadPoolExecutor(max_workers=len(touched)) as pool:
            list(pool.map(_perf_off, touched))

    def _query(self, server: _Server) -> tuple[Reply | None, dict[str, dict[str, Any]], str | None]:
        assert server.proxy is not None
        try:
            if self.perf and not server.perf_on:
                server.perf_touched = True  # before the call: it may take effect and time out
                server.proxy.command_inout("EnableEventSystemPerfMon", True)
                server.perf_on = True
            reply: Reply = json.loads(server.proxy.command_inout("QueryEventSystem"))
        except (tango.DevFailed, ValueError) as error:
            server.perf_on = False  # perhaps it restarted: on again at the next query
            return None, {}, describe(error)
        if self.perf and (reply.get("server") or {}).get("perf") is None:
            server.perf_on = False  # it restarted between two queries: on again next time
        stats: dict[str, dict[str, Any]] = {}
        for device, proxy in server.device_proxies.items():
            if device not in server.schedulers:
                shows = _shows_scheduler(proxy)
                if shows is None:
                    continue  # it does not answer: looked up again next time
                server.schedulers[device] = shows
            if not server.schedulers[device]:
                continue
            try:
                parsed = json.loads(proxy.read_attribute(STATISTICS_ATTRIBUTE).value)
            except (tango.DevFailed, ValueError) as error:
                _log.info("%s: %s", device, describe(error))
                continue
            if isinstance(parsed, dict) and "queues" in parsed:
                stats[device] = parsed
        return reply, stats, None


def admin_of(device: str, proxy: tango.DeviceProxy) -> str:
    """The admin device of ``device``'s server, from the database (the server need not
    run), with the same ``tango://host:port/`` prefix as ``device`` if it has one.

    Raises:
        tango.DevFailed: the device is not defined (``DB_DeviceNotDefined``).
    """
    info = proxy.get_device_db().get_device_info(proxy.dev_name())
    prefix = _TRL_PREFIX.match(device)
    return f"{prefix.group(0) if prefix else ''}dserver/{info.ds_full_name}".lower()


def _perf_off(server: _Server) -> None:
    assert server.proxy is not None
    try:
        server.proxy.command_inout("EnableEventSystemPerfMon", False)
        server.perf_on = server.perf_touched = False
    except tango.DevFailed as error:
        _log.warning(
            "could not turn performance monitoring off on %s: %s", server.admin, describe(error)
        )


def _shows_scheduler(proxy: tango.DeviceProxy) -> bool | None:
    """Whether the device has the scheduler statistics attribute; None if it does not
    answer."""
    try:
        names = {n.lower() for n in proxy.get_attribute_list()}
    except tango.DevFailed:
        return None
    return STATISTICS_ATTRIBUTE.lower() in names


@contextmanager
def _stopped_by_signals(stopping: StopRequest) -> Iterator[None]:
    """In the main thread: SIGINT and SIGTERM ask ``stopping`` to stop, and wake its
    wait at once; the handlers before are back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    restore_wakeup = stopping.wake_on_signals()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, lambda signum, frame: stopping.set())
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # (None: set outside Python, cannot be put back)
                signal.signal(sig, handler)
        restore_wakeup()


def main(
    devices: list[str],
    *,
    period: float,
    perf: bool,
    jsonl: Path | None,
    count: int | None,
    console: Console | None = None,
) -> int:
    """``nexus-writer event-monitor``: 0 when it ran to its count or was interrupted
    (Ctrl-C, or SIGTERM, which it takes as Ctrl-C), 2 when a device is not defined or the
    JSON lines file cannot be opened (the message, on stderr, says which).

    Once the monitor runs, a signal only asks it to stop after the poll under way (at
    most the 3 s query time-out): no exception is raised at an arbitrary point, where it
    could leave a thread pool or a Tango call half done, and further signals change
    nothing while monitoring is turned off."""
    try:
        with jsonl.open("a", encoding="utf-8") if jsonl else nullcontext() as out:
            try:
                monitor = EventMonitor(devices, perf=perf, jsonl=out, console=console)
            except tango.DevFailed as error:
                print(
                    f"event-monitor: cannot resolve the devices' servers: {describe(error)}",
                    file=sys.stderr,
                )
                return 2
            with _stopped_by_signals(monitor.stopping):
                monitor.run(period, count)
            monitor.stopping.close()
    except OSError as error:
        print(f"event-monitor: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0

#!/usr/bin/env python3
"""Seed 002's rogue-device scenario on an embedded Tango database, with plain callbacks and
with the CallbackScheduler, and the event monitor watching.

Three devices (``scripts/rogue_devices.py``): ``foo/bar/hw`` pushes ``position`` at 10 Hz
and ``mode`` events during its scan; ``foo/bar/top``'s ``Scan`` starts the hardware's scan
and waits for ``mode`` to come back to IDLE; ``foo/bar/rogue``, in the same server as
``top``, forwards ``position`` with a callback that takes 0.3 s. Run::

    .venv/bin/python scripts/rogue_scenario.py            # both ways, one after the other
    .venv/bin/python scripts/rogue_scenario.py --callbacks plain --json result.json

For each way it starts the top server afresh, lets the rogue's backlog build for
``--settle`` seconds, takes a monitor snapshot, calls ``Scan``, and takes another: with
plain callbacks the scan times out (the IDLE event waits behind the rogue's position
events in Tango's one event consumer thread) and the monitor's client table shows
``position processing time`` near 300 ms; with the scheduler the scan completes, the IDLE
event's latency stays under one rogue callback, and the scheduler's table shows the slow
queue. docs/tango-events.md walks through the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import tango
from rich.console import Console

from nexus_writer.tango.embedded import EmbeddedTangoDatabase
from nexus_writer.tango.event_monitor import EventMonitor, ServerReport

DEVICES = Path(__file__).with_name("rogue_devices.py")
HW, TOP, ROGUE = "foo/bar/hw", "foo/bar/top", "foo/bar/rogue"


def slowest(report: ServerReport) -> dict[str, Any] | None:
    """The stream whose events took the longest to process in ``report``: a Tango client
    table row ``<attr> processing time``, or a scheduler queue; None if neither."""
    found: list[tuple[float, str, str]] = []
    for row, summary in report.client_perf.items():
        if row.endswith(" processing time") and summary is not None:
            found.append((summary.median / 1e6, row.removesuffix(" processing time"), "tango"))
    for stats in report.schedulers.values():
        for queue in stats["queues"]:
            if queue["processing"]:
                found.append((queue["processing"]["median"], queue["queue"], "scheduler"))
    if not found:
        return None
    seconds, name, where = max(found)
    return {"stream": name, "processing_median": seconds, "seen_in": where}


def run_once(
    database: EmbeddedTangoDatabase, callbacks: str, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    env = {
        "ROGUE_CALLBACKS": callbacks,
        "ROGUE_DELAY": str(args.rogue_delay),
        "SCAN_TIME": str(args.scan_time),
        "SCAN_TIMEOUT": str(args.scan_timeout),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    console.rule(f"{callbacks} callbacks", characters="#")
    with database.start_server(DEVICES, "top", env=env):
        time.sleep(args.settle)  # the rogue's backlog builds, as on a server up for a while
        monitor = EventMonitor([HW, TOP], perf=True, console=console)
        try:
            monitor.poll()
            top = tango.DeviceProxy(TOP)
            top.set_timeout_millis(int((args.scan_timeout + 30) * 1000))
            started = time.monotonic()
            try:
                outcome: dict[str, Any] = {"completed": True, **json.loads(top.Scan())}
            except tango.DevFailed as error:
                outcome = {"completed": False, "error": str(error.args[0].desc).strip()}
            outcome["call_seconds"] = time.monotonic() - started
            reports = monitor.poll()
        finally:
            monitor.close()
    top_report = next(r for r in reports if r.admin.endswith("/top"))
    outcome["slowest"] = slowest(top_report)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callbacks", choices=["plain", "scheduled", "both"], default="both")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before the scan")
    parser.add_argument("--scan-time", type=float, default=1.0)
    parser.add_argument("--scan-timeout", type=float, default=3.0)
    parser.add_argument("--rogue-delay", type=float, default=0.3)
    parser.add_argument("--json", type=Path, help="write the outcomes to this file")
    args = parser.parse_args(argv)
    console = Console(width=160)
    results: dict[str, Any] = {"rogue_delay": args.rogue_delay}
    with EmbeddedTangoDatabase() as database:
        os.environ["TANGO_HOST"] = database.tango_host  # before this process's first proxy
        database.add_device("rogue_devices/hw", "HwDevice", HW)
        database.add_device("rogue_devices/top", "TopDevice", TOP)
        database.add_device("rogue_devices/top", "RogueDevice", ROGUE)
        env = {"SCAN_TIME": str(args.scan_time), "PYTHONPATH": os.pathsep.join(sys.path)}
        with database.start_server(DEVICES, "hw", env=env):
            ways = ["plain", "scheduled"] if args.callbacks == "both" else [args.callbacks]
            for callbacks in ways:
                results[callbacks] = run_once(database, callbacks, args, console)
    for callbacks in ("plain", "scheduled"):
        if callbacks in results:
            print(f"{callbacks}: {json.dumps(results[callbacks])}")  # one line, unwrapped
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

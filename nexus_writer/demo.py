"""``make demo``: the whole stack on this machine. An embedded Redis, an embedded Tango
database, ``NexusWriterService`` as a process of its own with a NexusWriter device for the
session, and the simulator; what was written is read back through a ``DeviceProxy``.

.. important::
   Runs in the main thread of the ``nexus-writer demo`` process; the servers are child
   processes, stopped when the demo ends, also when it fails.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import tango

from nexus_writer.nexus.master import entry_of_scan
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors, PublishedScan

#: The demo's scans: every type, with an MCA and frames in detector files.
DEMO_SCANS = (
    "ascan robx 0 1 20 0.01",
    "dscan roby -0.5 0.5 10 0.01",
    "amesh robx 0 1 9 roby 0 1 7 0.005",
    "loopscan 30 0.01",
    "timescan 0.01 25",
)
DEVICE = "demo/nexus/writer"


def run_demo(root: Path, session: str = "demo", timeout: float = 120.0) -> int:
    """Publish the demo scans, have the NexusWriter device write them, and print what was
    written. Returns an exit code."""
    from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase  # noqa: PLC0415
    from nexus_writer.tango.server import register  # noqa: PLC0415

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis() as redis_server, EmbeddedTangoDatabase() as database:
        os.environ["TANGO_HOST"] = database.tango_host  # before this process's first proxy
        register("demo", session, DEVICE, [("redis_url", redis_server.url), ("roots", str(root))])
        started = time.monotonic()
        with DeviceServer(
            [sys.executable, "-m", "nexus_writer.tango.server", "demo"],
            tango_host=database.tango_host,
        ):
            device = tango.DeviceProxy(DEVICE)
            _wait(lambda: device.state() == tango.DevState.ON, "the device is ON", timeout)
            print(
                f"NexusWriterService demo: {DEVICE} is {device.state()} "
                f"({time.monotonic() - started:.1f} s after launch): {device.status()}"
            )
            client = connect(redis_server.url)
            beamline = Beamline(
                SessionPublisher(client, session),
                root=str(root),
                detectors=Detectors(counters=3, mca=True, image="file", image_shape=(64, 80)),
            )
            scans = [beamline.run(c, comments=("demo scan",)) for c in DEMO_SCANS]
            scans.append(beamline.run("ascan robz 1 2 40 0.005", abort_after=15))
            client.close()
            try:
                _wait(
                    lambda: all(device.scan_state(s.key) != "RUNNING" for s in scans),
                    "every scan written",
                    timeout,
                )
            except TimeoutError as exc:
                print(f"demo: {exc}", file=sys.stderr)
                return 1
            states = {s.key: (device.scan_state(s.key), device.scan_url(s.key)) for s in scans}
    return _report(scans, states)


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Look until ``condition`` holds (another process makes it so; the demo has no event
    to wait on), within ``timeout`` seconds.

    Raises:
        TimeoutError: it did not hold in time; the message says what.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if condition():
                return
            last = None
        except tango.DevFailed as exc:  # a scan not known to the device yet, say
            last = exc
        if time.monotonic() > deadline:
            because = f" ({last.args[0].desc})" if isinstance(last, tango.DevFailed) else ""
            raise TimeoutError(f"not done within {timeout} s: {what}{because}")
        time.sleep(0.05)


def _report(scans: list[PublishedScan], states: dict[str, tuple[str, str]]) -> int:
    """What the device says of each scan, the first entry's tree, nxcheck's verdict."""
    failed = [key for key, (state, _) in states.items() if state != "OFF"]
    for scan in scans:
        state, url = states[scan.key]
        print(
            f"{scan.document.title:<38} {scan.npoints:4d} points  {scan.end_reason.value:<10} "
            f"{state:<5} {url}"
        )
    files = sorted({s.document.file for s in scans})
    print(
        f"\n{len(scans)} scans in {len(files)} file(s); "
        f"{len(scans) - len(failed)} written, {len(failed)} failed"
    )
    for key in failed:
        print(f"  {states[key][0]} {key}")
    first = scans[0]
    entry = _entry_name(first)
    if entry is not None:
        print(f"\n{first.document.file}:/{entry}")
        with h5py.File(first.document.file, "r", locking=False) as handle:
            _tree(handle[entry], depth=0)
    errors = [nxcheck_errors(f) for f in files]
    print(f"\nnxcheck: {sum(errors)} error(s)")
    return 0 if not failed and not any(errors) else 1


def _entry_name(scan: PublishedScan) -> str | None:
    """The entry the writer gave ``scan`` (``scan_000N``, or ``scan_000N_2``... when an
    earlier run left a scan of that number in the file)."""
    with h5py.File(scan.document.file, "r", locking=False) as handle:
        return entry_of_scan(handle, scan.key, scan.document.number)


def _tree(group: h5py.Group, depth: int, max_depth: int = 2) -> None:
    for name, item in group.items():
        pad = "  " * (depth + 1)
        if isinstance(item, h5py.Group):
            print(f"{pad}{name}/  ({item.attrs.get('NX_class', '')})")
            if depth + 1 < max_depth:
                _tree(item, depth + 1, max_depth)
        else:
            print(f"{pad}{name}  {item.shape} {item.dtype}")

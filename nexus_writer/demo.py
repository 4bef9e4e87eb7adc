"""``make demo``: an embedded Redis, the session writer and the simulator, in one process.

.. important::
   Runs in the main thread, whose hub runs the session writer; the simulator runs in a
   plain thread of its own (it paces points with ``time.sleep``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import h5py

from nexus_writer.nexus.master import entry_of_scan
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.session_writer import NexusSessionWriter
from nexus_writer.simulator import Beamline, Detectors, PublishedScan
from sync_primitives import AsyncResult

#: The demo's scans: every type, with an MCA and frames in detector files.
DEMO_SCANS = (
    "ascan robx 0 1 20 0.01",
    "dscan roby -0.5 0.5 10 0.01",
    "amesh robx 0 1 9 roby 0 1 7 0.005",
    "loopscan 30 0.01",
    "timescan 0.01 25",
)


def run_demo(root: Path, session: str = "demo", timeout: float = 120.0) -> int:
    """Publish the demo scans, write them, and print what was written. Returns an exit code."""
    root = root.resolve()
    with EmbeddedRedis() as server:
        client = connect(server.url)
        writer = NexusSessionWriter(client, session, WriterOptions(roots=(root,)))
        writer.start()
        published: AsyncResult[list[PublishedScan]] = AsyncResult()
        beamline = Beamline(
            SessionPublisher(client, session),
            root=str(root),
            detectors=Detectors(counters=3, mca=True, image="file", image_shape=(64, 80)),
        )

        def simulate() -> None:
            try:
                scans = [beamline.run(c, comments=("demo scan",)) for c in DEMO_SCANS]
                scans.append(beamline.run("ascan robz 1 2 40 0.005", abort_after=15))
                published.set(scans)
            except Exception as exc:
                published.set(exc)

        threading.Thread(target=simulate, name="simulator", daemon=True).start()
        scans = published.get(timeout)  # yields to the hub: the writer runs meanwhile
        complete = writer.wait_for_scans([s.key for s in scans], timeout)
        writer.stop(wait=True, timeout=60)
    if not complete:
        print(f"demo: not every scan was written within {timeout} s", file=sys.stderr)
        return 1
    return _report(scans, writer)


def _report(scans: list[PublishedScan], writer: NexusSessionWriter) -> int:
    stats = writer.session_statistics()
    failed = [s for s in stats.recent if s.state != "OFF"]
    entries = {scan.key: _entry_name(scan) for scan in scans}
    for scan in scans:
        print(
            f"{entries[scan.key] or '(none)':<12} {scan.document.title:<38} "
            f"{scan.npoints:4d} points  {scan.end_reason.value:<10} -> {scan.document.file}"
        )
    files = sorted({s.document.file for s in scans})
    print(
        f"\n{len(scans)} scans in {len(files)} file(s); "
        f"{stats.scans_succeeded} written, {stats.scans_failed} failed"
    )
    for problem in failed:
        print(f"  FAULT {problem.name}: {problem.reason}")
    first = scans[0]
    if entries[first.key] is not None:
        print(f"\n{first.document.file}:/{entries[first.key]}")
        with h5py.File(first.document.file, "r", locking=False) as handle:
            _tree(handle[entries[first.key]], depth=0)
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

"""Helpers for writer tests: run a scan writer to the end, compare a file with what was
published, ask nxcheck, and run pytest on a test module of a test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import h5py
import numpy as np
import redis

from nexus_writer.nexus.master import entry_of_scan
from nexus_writer.nexus.names import short_names
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import Keys, ScanPublisher, SessionPublisher
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.service import all_acknowledged
from nexus_writer.simulator import PublishedScan
from nexus_writer.subscriber import Mode
from tests.conftest import PROMPT, wait_until


def started_scan(session: SessionPublisher, **scan: Any) -> ScanPublisher:
    """``session.new_scan(**scan)``, prepared and started: ready for points."""
    publisher = session.new_scan(**scan)
    publisher.prepare()
    publisher.start()
    return publisher


def write_scan(
    client: redis.Redis, key: str, mode: Mode = Mode.PARALLEL, options: WriterOptions | None = None
) -> NexusScanWriter:
    """Write one published scan to its file and return the finished writer."""
    writer = NexusScanWriter(client, key, options or WriterOptions(), mode=mode)
    writer.start(wait=True, timeout=PROMPT * 6)
    return writer


def entry_of(handle: h5py.File, published: PublishedScan) -> h5py.Group:
    """The entry the writer gave this scan (found by its key, whatever its name)."""
    doc = published.document
    name = entry_of_scan(handle, doc.key, doc.number)
    assert name is not None, f"no entry of {doc.key} in {doc.file}"
    return handle[name]


def assert_file_has_every_value(published: PublishedScan) -> None:
    """Every value the simulator published is in the file, bit for bit, where the layout
    says (measurement links, through virtual datasets for detector files)."""
    names = short_names(c.name for c in published.document.channels)
    with h5py.File(published.document.file, "r", locking=False) as handle:
        measurement = entry_of(handle, published)["measurement"]
        for channel, values in published.values.items():
            got = measurement[names[channel]][()]
            assert got.dtype == values.dtype, channel
            assert got.shape == values.shape, (channel, got.shape, values.shape)
            np.testing.assert_array_equal(got, values, err_msg=channel)


def text(dataset: h5py.Dataset) -> str:
    value = dataset[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def wait_until_all_acknowledged(
    client: redis.Redis, session: str, count: int | None = None, timeout: float = 60.0
) -> None:
    """Until :func:`all_acknowledged` (and the session holds ``count`` announcements, if
    given). Redis is the only place that says so for scans written before a crash too,
    and it notifies nobody: it is looked at, within a bound."""
    wait_until(
        lambda: all_acknowledged(client, session),
        f"every scan of {session} is done with",
        timeout,
        interval=0.02,
    )
    if count is not None:
        assert client.xlen(Keys().session_scans(session)) == count


#: pytest in a child process, on a test module written in its working directory
INNER_PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def run_inner_pytest(
    directory: Path,
    module: str,
    *options: str,
    env: dict[str, str] | None = None,
    timeout: float,
) -> tuple[subprocess.CompletedProcess[str], dict[str, list[tuple[str, str]]]]:
    """Run pytest in a child process on ``module`` (a test module's text, written as
    ``directory/test_inner.py``), with ``options`` and ``env`` added to ours; its output,
    and each test case's outcomes from its JUnit report: ``[(tag, message)]``, the tag
    ``failure``, ``error`` or ``skipped`` (none: it passed).

    Outcomes are read from the report, not from the terminal: how often pytest repeats a
    message there depends on the terminal's width (CI's short summary has it).
    """
    (directory / "test_inner.py").write_text(module)
    report = directory / "report.xml"
    run = subprocess.run(
        [*INNER_PYTEST, *options, f"--junitxml={report}", "test_inner.py"],
        cwd=directory,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert report.exists(), run.stdout + run.stderr
    outcomes = {
        case.get("name", ""): [
            (child.tag, child.get("message", ""))
            for child in case
            if child.tag in ("failure", "error", "skipped")
        ]
        for case in ElementTree.parse(report).iter("testcase")
    }
    return run, outcomes

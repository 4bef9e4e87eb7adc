"""The standalone service, as a user runs it: ``nexus-writer run``, stopped by SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import hdf5plugin
import pytest
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.nexus.options import Compression, WriterOptions
from nexus_writer.protocol import SessionPublisher
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors
from tests.writer.helpers import assert_file_has_every_value, text, write_scan

ROOT = Path(__file__).parents[2]


def lines_of(stream: object) -> queue.Queue[str]:
    """The lines a process writes, as they come (read by a thread of their own)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str], needle: str, timeout: float = 30.0) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line with {needle!r} within {timeout} s: {seen[-10:]}"
            ) from None
        seen.append(line)
        if needle in line:
            return line


def test_the_service_writes_scans_until_sigterm(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_writer.cli",
            "--log-level",
            "info",
            "run",
            "--redis",
            redis_server.url,
            "--session",
            "service",
            "--root",
            str(tmp_path),
            "--compression",
            "gzip",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        lines = lines_of(service.stderr)
        wait_for_line(lines, "writing session 'service'")
        client = redis.Redis.from_url(redis_server.url)
        line = Beamline(
            SessionPublisher(client, "service"),
            root=str(tmp_path),
            detectors=Detectors(mca=True),
            record=True,
        )
        published = line.run("ascan robx 0 1 8 0")
        wait_for_line(lines, f"subscriber '{published.key}': OFF")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
        wait_for_line(lines, "subscriber 'session service': OFF")
    finally:
        if service.poll() is None:
            service.kill()
    assert_file_has_every_value(published)
    with h5py.File(published.document.file, "r") as handle:
        spectra = handle[entry_name(published.document.number)]["instrument/mca1/data"]
        assert spectra.compression == "gzip"  # readable without plugins


@pytest.mark.parametrize("compression", list(Compression), ids=[c.value for c in Compression])
def test_compression_applies_to_arrays_only(
    redis_client: redis.Redis, tmp_path: Path, compression: Compression
) -> None:
    published = Beamline(
        SessionPublisher(redis_client, "comp"),
        root=str(tmp_path),
        detectors=Detectors(mca=True),
        record=True,
    ).run("loopscan 5 0")
    assert (
        write_scan(redis_client, published.key, options=WriterOptions(compression=compression))
        .statistics()
        .reason
        is None
    )
    assert_file_has_every_value(published)
    with h5py.File(published.document.file, "r") as handle:
        entry = handle[entry_name(published.document.number)]
        spectra, diode = entry["instrument/mca1/data"], entry["instrument/diode1/data"]
        filters = spectra.id.get_create_plist()
        ids = {filters.get_filter(i)[0] for i in range(filters.get_nfilters())}
        expected = {
            Compression.BITSHUFFLE_LZ4: {hdf5plugin.Bitshuffle.filter_id},
            Compression.GZIP: {1, 2},  # deflate and shuffle
            Compression.NONE: set(),
        }[compression]
        assert ids == expected
        assert diode.compression is None and diode.id.get_create_plist().get_nfilters() == 0
        assert text(entry["writer/status"]) == "SUCCEEDED"

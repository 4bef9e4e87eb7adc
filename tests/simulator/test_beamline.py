"""The simulator's scans, read back through the reference reader, equal what it recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import redis

from nexus_writer.protocol import (
    ChannelEndEvent,
    CommentEvent,
    EndReason,
    FrameRefsEvent,
    Role,
    ScanReader,
    SessionPublisher,
)
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import Beamline, Detectors, PublishedScan, ScanSyntaxError
from tests.protocol.helpers import errors_of, points_of, read_all

ROOT = Path(__file__).parents[2]


def beamline(client: redis.Redis, tmp_path: Path, **detectors: Any) -> Beamline:
    return Beamline(
        SessionPublisher(client, "sim"),
        root=str(tmp_path),
        detectors=Detectors(**detectors),
        batch=4,
        record=True,
    )


def assert_read_back_equals_recorded(client: redis.Redis, published: PublishedScan) -> None:
    reader = ScanReader(client, published.key)
    events = read_all(reader)
    assert errors_of(events) == []
    for channel in reader.document.channels:
        want = published.values[channel.name]
        if channel.role is Role.FRAME_REF:
            frames = []
            for ref in (e for e in events if isinstance(e, FrameRefsEvent)):
                with h5py.File(ref.ref.file, "r") as detector_file:
                    dataset = detector_file[ref.ref.dataset]
                    frames.append(dataset[ref.ref.frame : ref.ref.frame + ref.count])
            got = np.concatenate(frames)
        else:
            got = points_of(events, channel.name)
        assert got.dtype == want.dtype and got.shape == want.shape, channel.name
        np.testing.assert_array_equal(got, want, err_msg=channel.name)
    totals = {e.channel.name: e.total for e in events if isinstance(e, ChannelEndEvent)}
    assert set(totals.values()) == {published.npoints}


@pytest.mark.parametrize(
    ("command", "shape", "motors"),
    [
        ("ascan robx 0 1 10 0", (11,), ["axis:robx"]),
        ("dscan roby -1 1 6 0", (7,), ["axis:roby"]),
        ("amesh robx 0 1 4 roby 0 2 3 0", (5, 4), ["axis:robx", "axis:roby"]),
        ("loopscan 9 0", (9,), []),
        ("timescan 0 13", (), []),
    ],
)
def test_every_scan_type_reads_back_exactly(
    redis_client: redis.Redis,
    tmp_path: Path,
    command: str,
    shape: tuple[int, ...],
    motors: list[str],
) -> None:
    line = beamline(redis_client, tmp_path, counters=4, mca=True, image="inline")
    published = line.run(command)
    doc = published.document
    assert doc.type == command.split(maxsplit=1)[0] and doc.shape == shape
    assert [c.name for c in doc.channels if c.role is Role.POSITIONER] == motors
    assert doc.channel("mca1:spectrum").shape == (4096,)
    assert doc.plots[0].axes == (tuple(motors) or ("timer:elapsed_time",))
    assert published.end_reason is EndReason.SUCCESS
    assert_read_back_equals_recorded(redis_client, published)


def test_mesh_moves_the_fast_motor_first(redis_client: redis.Redis, tmp_path: Path) -> None:
    published = beamline(redis_client, tmp_path).run("amesh robx 0 1 2 roby 5 6 1 0")
    np.testing.assert_array_equal(published.values["axis:robx"], [0, 0.5, 1, 0, 0.5, 1])
    np.testing.assert_array_equal(published.values["axis:roby"], [5, 5, 5, 6, 6, 6])


def test_frames_go_to_detector_files_and_are_referenced(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    line = beamline(redis_client, tmp_path, image="file", image_shape=(16, 20), frames_per_file=5)
    published = line.run("ascan robx 0 1 11 0")  # 12 frames: files of 5, 5 and 2
    assert [os.path.basename(f) for f in published.detector_files] == [
        "cam1_0000.h5",
        "cam1_0001.h5",
        "cam1_0002.h5",
    ]
    assert all(f.startswith(str(tmp_path / "sim" / "scan0001")) for f in published.detector_files)
    assert_read_back_equals_recorded(redis_client, published)


def test_abort_and_failure_end_early_with_reason(redis_client: redis.Redis, tmp_path: Path) -> None:
    line = beamline(redis_client, tmp_path)
    aborted = line.run("loopscan 50 0", abort_after=7, comments=("first try",))
    assert (aborted.npoints, aborted.end_reason) == (7, EndReason.USER_ABORT)
    failed = line.run("ascan robx 0 1 20 0", fail_after=3, abort_after=10)
    assert (failed.npoints, failed.end_reason) == (3, EndReason.FAILURE)
    reader = ScanReader(redis_client, failed.key)
    read_all(reader)
    assert reader.document.end_message == "simulated detector failure after 3 points"
    events = read_all(ScanReader(redis_client, aborted.key))
    assert [e.text for e in events if isinstance(e, CommentEvent)] == ["first try"]
    assert_read_back_equals_recorded(redis_client, aborted)


def test_motors_end_where_a_beamline_leaves_them(redis_client: redis.Redis, tmp_path: Path) -> None:
    line = beamline(redis_client, tmp_path)
    line.run("ascan robx 0 2 4 0")
    assert line.positions["robx"] == 2.0
    line.run("dscan robx -1 1 4 0")  # relative to 2.0, and back
    assert line.positions["robx"] == 2.0
    dscan = line.run("dscan robx -1 1 2 0")
    np.testing.assert_array_equal(dscan.values["axis:robx"], [1.0, 2.0, 3.0])
    assert dscan.document.positioners_start["robx"].value == 2.0


def test_count_time_paces_the_points(redis_client: redis.Redis, tmp_path: Path) -> None:
    started = time.monotonic()
    beamline(redis_client, tmp_path).run("loopscan 10 0.02")
    assert time.monotonic() - started >= 10 * 0.02


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("scan robx 0 1 2 0", "the scan type must be one of"),
        ("ascan nomotor 0 1 2 0", "unknown motor 'nomotor'"),
        ("ascan robx 0 1 0 0", "expected 'ascan MOTOR START STOP INTERVALS COUNT_TIME'"),
        ("amesh robx 0 1 2 robx 0 1 2 0", "the two motors of a mesh must differ"),
        ("loopscan ten 0.1", "expected 'loopscan NPOINTS COUNT_TIME'"),
    ],
)
def test_bad_commands_are_named(
    redis_client: redis.Redis, tmp_path: Path, command: str, message: str
) -> None:
    with pytest.raises(ScanSyntaxError, match=message):
        beamline(redis_client, tmp_path).run(command)


def test_command_line_runs_the_good_scans_and_names_the_bad_one(tmp_path: Path) -> None:
    with EmbeddedRedis() as server:
        run = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "simulate_beamline.py"),
                "--redis",
                server.url,
                "--root",
                str(tmp_path),
                "--session",
                "cli",
                "--image",
                "file",
                "ascan robx 0 1 5 0",
                "warp 9",
                "loopscan 3 0",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    assert run.returncode == 1, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and "6 points, SUCCESS" in lines[0] and "3 points, SUCCESS" in lines[1]
    assert "skipped: 'warp 9': the scan type must be one of" in run.stderr
    assert (tmp_path / "cli" / "scan0001" / "cam1_0000.h5").exists()

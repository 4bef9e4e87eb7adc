"""Where a scan may write, and which files it may refer to (issue 9, defect 1): symbolic
links never lead out of the roots, relative paths are refused, frame references must lie
below a root too."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import redis

from nexus_writer.nexus.options import PathRefusedError, WriterOptions
from nexus_writer.protocol import Role, SessionPublisher
from nexus_writer.subscriber import State
from tests.writer.helpers import started_scan, text, write_scan


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """A root, and a directory outside it holding a file worth protecting."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with h5py.File(outside / "precious.h5", "w") as handle:
        handle["keep"] = [1, 2, 3]
    return root, outside


def publish(client: redis.Redis, file: str, *, frames: str | None = None) -> str:
    """A small scan naming ``file``: a counter, and with ``frames`` an image channel whose
    two frames are referred to in that file."""
    channels: list[dict[str, object]] = [{"name": "diode", "dtype": "<f8"}]
    if frames is not None:
        channels.append({"name": "cam", "dtype": "<u2", "shape": [4, 5], "role": Role.FRAME_REF})
    scan = started_scan(
        SessionPublisher(client, "paths"), name="ct", title="ct", file=file, channels=channels
    )
    scan.send("diode", np.arange(2.0))
    if frames is not None:
        scan.send_refs("cam", 2, frames, "/entry/data", 0)
    scan.close()
    return scan.key


def snapshot(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def refused(client: redis.Redis, key: str, options: WriterOptions, why: str) -> None:
    writer = write_scan(client, key, options=options)
    assert writer.state is State.FAULT
    assert why in (writer.statistics().reason or "")
    assert writer.unfinished is None  # the publisher's mistake: not written again


def test_a_directory_link_inside_the_root_does_not_lead_out(
    redis_client: redis.Redis, places: tuple[Path, Path]
) -> None:
    root, outside = places
    (root / "link").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    key = publish(redis_client, str(root / "link" / "escape.h5"))
    refused(redis_client, key, WriterOptions(roots=(root,)), "outside the writer's root")
    assert snapshot(outside) == before


def test_a_file_link_inside_the_root_does_not_lead_out(
    redis_client: redis.Redis, places: tuple[Path, Path]
) -> None:
    root, outside = places
    (root / "session.h5").symlink_to(outside / "precious.h5")
    before = snapshot(outside)
    key = publish(redis_client, str(root / "session.h5"))
    refused(redis_client, key, WriterOptions(roots=(root,)), "outside the writer's root")
    assert snapshot(outside) == before


def test_a_link_in_place_of_the_scans_directory_does_not_lead_out(
    redis_client: redis.Redis, places: tuple[Path, Path]
) -> None:
    root, outside = places
    (root / "session_scans").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    key = publish(redis_client, str(root / "session.h5"))
    refused(redis_client, key, WriterOptions(roots=(root,)), "outside the writer's root")
    assert snapshot(outside) == before


@pytest.mark.parametrize("roots", ["with roots", "without roots"])
def test_a_relative_file_is_refused(
    redis_client: redis.Redis, places: tuple[Path, Path], roots: str
) -> None:
    root, _ = places
    options = WriterOptions(roots=(root,) if roots == "with roots" else ())
    key = publish(redis_client, "data/session.h5")
    refused(redis_client, key, options, "'data/session.h5' is not an absolute path")
    assert not Path("data").exists()


@pytest.mark.parametrize("frames", ["outside", "relative", "linked out"])
def test_frames_outside_the_roots_are_not_referred_to(
    redis_client: redis.Redis, places: tuple[Path, Path], frames: str
) -> None:
    root, outside = places
    (root / "det").symlink_to(outside, target_is_directory=True)
    file = {
        "outside": str(outside / "precious.h5"),
        "relative": "precious.h5",
        "linked out": str(root / "det" / "precious.h5"),
    }[frames]
    key = publish(redis_client, str(root / "session.h5"), frames=file)
    writer = write_scan(redis_client, key, options=WriterOptions(roots=(root,)))
    assert writer.state is State.FAULT  # the scan is written, without those frames
    assert writer.unfinished is None
    with h5py.File(root / "session.h5", "r") as handle:
        entry = handle["scan_0001"]
        np.testing.assert_array_equal(entry["measurement/diode"][()], [0.0, 1.0])
        messages = [m.decode() for m in entry["writer/messages"][()]]
        assert any("frame file" in m and "frames 0..1 not referred to" in m for m in messages)
        assert not any("points published" in m for m in messages)  # said once, above
        cam = entry["instrument/cam/data"]  # the points are there, as missing ones
        assert cam.shape == (2, 4, 5)
        assert not cam.virtual_sources()
        np.testing.assert_array_equal(cam[()], np.zeros((2, 4, 5)))
        np.testing.assert_array_equal(entry["instrument/cam/missing_points"][()], [[0, 2]])
        assert list(entry["instrument/cam/missing_reasons"].asstr()[()]) == ["refused"]
        assert text(entry["writer/status"]) == "FAULT"


def test_frames_refused_between_referred_ones_read_as_missing(
    redis_client: redis.Redis, places: tuple[Path, Path]
) -> None:
    """Points 0..1 and 4..5 in a detector file below the root, 2..3 in one outside: the
    virtual dataset keeps its six points; 2..3 read as NaN (floats) and are listed."""
    root, outside = places
    frames = np.arange(6 * 2 * 3, dtype="<f4").reshape(6, 2, 3)
    with h5py.File(root / "det.h5", "w") as handle:
        handle["data"] = frames
    with h5py.File(outside / "det.h5", "w") as handle:
        handle["data"] = frames
    scan = started_scan(
        SessionPublisher(redis_client, "paths"),
        name="ct",
        title="ct",
        file=str(root / "session.h5"),
        channels=[{"name": "spec", "dtype": "<f4", "shape": [2, 3], "role": Role.FRAME_REF}],
    )
    scan.send_refs("spec", 2, str(root / "det.h5"), "/data", 0)
    scan.send_refs("spec", 2, str(outside / "det.h5"), "/data", 2)
    scan.send_refs("spec", 2, str(root / "det.h5"), "/data", 4)
    scan.close()
    writer = write_scan(redis_client, scan.key, options=WriterOptions(roots=(root,)))
    assert writer.state is State.FAULT
    with h5py.File(root / "session.h5", "r") as handle:
        group = handle["scan_0001/instrument/spec"]
        expected = frames.copy()
        expected[2:4] = np.nan
        np.testing.assert_array_equal(group["data"][()], expected)
        np.testing.assert_array_equal(group["missing_points"][()], [[2, 2]])
        assert list(group["missing_reasons"].asstr()[()]) == ["refused"]
        sources = {Path(s.file_name).resolve() for s in group["data"].virtual_sources()}
        assert sources == {(root / "det.h5").resolve()}


def test_a_link_swapped_in_before_the_opening_is_caught(places: tuple[Path, Path]) -> None:
    root, outside = places
    options = WriterOptions(roots=(root,))
    target = options.check_path(str(root / "scan.h5"))
    descriptor = os.open(outside / "precious.h5", os.O_RDONLY)  # what the open really got
    try:
        target.symlink_to(outside / "precious.h5")
        with pytest.raises(PathRefusedError, match="changed while it was opened"):
            options.check_opened(target, descriptor)
    finally:
        os.close(descriptor)

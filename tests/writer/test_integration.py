"""Every simulator scan type, in every subscriber mode: every published value lands in the
file, with the metadata, and the file is valid NeXus."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.nexus.validation import nxcheck_errors
from nexus_writer.protocol import EndReason, SessionPublisher
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.simulator import Beamline, Detectors
from nexus_writer.subscriber import Mode, State
from tests.conftest import PROMPT
from tests.writer.helpers import (
    assert_file_has_every_value,
    entry_of,
    text,
    write_scan,
)

SCANS = [
    "ascan robx 0 1 12 0",
    "dscan roby -1 1 7 0",
    "amesh robx 0 1 4 roby 0 2 3 0",
    "loopscan 9 0",
    "timescan 0 11",
]


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
@pytest.mark.parametrize("image", ["inline", "file"])
def test_every_scan_type_lands_value_for_value(
    redis_client: redis.Redis, tmp_path: Path, mode: Mode, image: str
) -> None:
    beamline = Beamline(
        SessionPublisher(redis_client, "integration"),
        root=str(tmp_path),
        detectors=Detectors(
            counters=4, mca=True, image=image, image_shape=(12, 10), frames_per_file=4
        ),
        batch=3,  # several entries per channel, joined into batches by the reader
        record=True,
    )
    for command in SCANS:
        published = beamline.run(command, comments=("first", "second"))
        writer = write_scan(redis_client, published.key, mode)
        stats = writer.statistics()
        assert (stats.state, stats.reason) == ("OFF", None)
        assert stats.events_processed == stats.events_received > 0
        assert_file_has_every_value(published)
        doc = published.document
        with h5py.File(doc.file, "r", locking=False) as handle:
            entry = entry_of(handle, published)
            assert (
                handle.attrs["NX_class"] == "NXroot" and handle.attrs["creator"] == "nexus-writer"
            )
            assert text(entry["title"]) == command
            assert text(entry["end_reason"]) == "SUCCESS"
            assert text(entry["writer/status"]) == "SUCCEEDED"
            assert text(entry["start_time"]) <= text(entry["end_time"])
            notes = entry["comments"]
            assert [text(notes[n]["data"]) for n in sorted(notes)] == ["first", "second"]
            start = entry["instrument/positioners_start"]
            assert set(start) == set(doc.positioners_start)
            assert start["robx"].attrs["units"] == "mm"
            assert entry["scan_parameters/type"][()].decode() == command.split()[0]
            default = entry[entry.attrs["default"]]
            assert default.attrs["NX_class"] == "NXdata"
            signal = default[default.attrs["signal"]]
            if command.startswith("amesh"):
                assert signal.shape == (4, 5)  # (slow, fast)
                assert list(default.attrs["axes"]) == ["roby", "robx"]
                np.testing.assert_array_equal(signal[()].ravel(), published.values["simu:diode1"])
            else:
                assert signal.shape == (published.npoints,)
    assert nxcheck_errors(beamline.session_file) == 0


def test_aborted_and_failed_scans_record_their_end(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    beamline = Beamline(SessionPublisher(redis_client, "ends"), root=str(tmp_path), record=True)
    aborted = beamline.run("ascan robx 0 1 30 0", abort_after=10)
    failed = beamline.run("amesh robx 0 1 4 roby 0 1 4 0", fail_after=12)
    for published, reason in ((aborted, "USER_ABORT"), (failed, "FAILURE")):
        writer = write_scan(redis_client, published.key)
        assert writer.state is State.OFF
        assert_file_has_every_value(published)
        with h5py.File(published.document.file, "r", locking=False) as handle:
            entry = entry_of(handle, published)
            assert text(entry["end_reason"]) == reason
            assert f"after {published.npoints} points" in text(entry["end_message"])
    with h5py.File(failed.document.file, "r", locking=False) as handle:
        mesh = entry_of(handle, failed)[entry_of(handle, failed).attrs["default"]]
        assert mesh[mesh.attrs["signal"]].shape == (2, 5)  # only the complete rows


def test_scans_of_a_session_share_one_file_one_entry_each(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    beamline = Beamline(SessionPublisher(redis_client, "shared"), root=str(tmp_path), record=True)
    first = beamline.run("loopscan 5 0")
    second = beamline.run("loopscan 7 0")
    writers = [NexusScanWriter(redis_client, p.key, mode=Mode.CONCURRENT) for p in (first, second)]
    for writer in writers:  # both hold the file at once
        writer.start()
    for writer in writers:
        assert writer.join(PROMPT * 6) and writer.state is State.OFF
    assert first.document.file == second.document.file
    with h5py.File(first.document.file, "r", locking=False) as handle:
        assert sorted(handle) == [entry_name(1), entry_name(2)]
        assert handle.attrs["default"] == entry_name(2)
    assert_file_has_every_value(first)
    assert_file_has_every_value(second)
    assert first.end_reason is EndReason.SUCCESS


def test_frame_references_keep_one_mapping_per_detector_file(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    beamline = Beamline(
        SessionPublisher(redis_client, "vds"),
        root=str(tmp_path),
        detectors=Detectors(image="file", image_shape=(4, 5), frames_per_file=10),
        batch=2,  # five references per detector file
        record=True,
    )
    published = beamline.run("loopscan 30 0")
    assert write_scan(redis_client, published.key).state is State.OFF
    assert_file_has_every_value(published)
    with h5py.File(published.document.file, "r") as handle:
        frames = entry_of(handle, published)["instrument/cam1/data"]
        assert len(frames.virtual_sources()) == len(published.detector_files) == 3

"""Bad input never costs measured data (issue 9, defects 2, 5, 6, 7): a scan is published
correctly, then its stored document is spoilt the way a careless publisher would; the
writer keeps every good channel's points, ends the entry (status, messages, end_time),
and says what was wrong."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np
import pytest
import redis

from nexus_writer.nexus.names import entry_name
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.protocol import Keys, Plot, SessionPublisher
from nexus_writer.protocol.reader import MAX_DOCUMENT_DEPTH, nesting_depth
from nexus_writer.scan_writer import NexusScanWriter
from nexus_writer.subscriber import State
from sync_primitives import Thread
from tests.conftest import wait_until
from tests.writer.helpers import started_scan, text, write_scan

COUNTS = np.arange(5.0)


def publish(client: redis.Redis, root: Path, spoil: Callable[[dict[str, Any]], object]) -> str:
    """A scan of a motor and a counter (5 points), closed, then its document spoilt."""
    scan = started_scan(
        SessionPublisher(client, "bad"),
        name="ascan",
        title="ascan m 0 4 5",
        file=str(root / "bad.h5"),
        channels=[
            {"name": "axis:m", "dtype": "<f8", "role": "positioner"},
            {"name": "simu:diode", "dtype": "<f8"},
        ],
        shape=[5],
        positioners={"m": 0.0},
        user={"sample": "gold"},
    )
    scan.send("axis:m", COUNTS)
    scan.send("simu:diode", COUNTS * 10)
    scan.close()
    document = json.loads(client.get(scan.key) or b"{}")
    spoil(document)
    client.set(scan.key, json.dumps(document))
    return scan.key


def entry(root: Path) -> h5py.Group:
    return h5py.File(root / "bad.h5", "r")[entry_name(1)]


def messages(group: h5py.Group) -> list[str]:
    return [m.decode() for m in group["writer/messages"][()]]


def check_kept(client: redis.Redis, root: Path, key: str, status: str, *needles: str) -> h5py.Group:
    writer = write_scan(client, key)
    assert writer.state is (State.OFF if status == "SUCCEEDED" else State.FAULT)
    group = entry(root)
    assert "end_time" in group  # a reader waiting for the end is not kept waiting
    assert text(group["writer/status"]) == status
    said = messages(group)
    for needle in needles:
        assert any(needle in m for m in said), (needle, said)
    np.testing.assert_array_equal(group["measurement/diode"][()], COUNTS * 10)
    return group


def channel(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in document["channels"] if c["name"] == name)


def test_duplicate_channel_names(redis_client: redis.Redis, tmp_path: Path) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        doc["channels"].append(dict(channel(doc, "simu:diode"), index=7))

    check_kept(
        redis_client,
        tmp_path,
        publish(redis_client, tmp_path, spoil),
        "FAULT",
        "the name is used by channel #1 too",
    )


def test_duplicate_channel_indices(redis_client: redis.Redis, tmp_path: Path) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        doc["channels"].append(dict(channel(doc, "simu:diode"), name="other"))

    check_kept(
        redis_client,
        tmp_path,
        publish(redis_client, tmp_path, spoil),
        "FAULT",
        "index 1 is used by channel 'simu:diode' too",
    )


@pytest.mark.parametrize("reserved", ["positioners_start", "positioners_end"])
def test_a_channel_named_like_a_group_of_the_layout(
    redis_client: redis.Redis, tmp_path: Path, reserved: str
) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        channel(doc, "axis:m")["name"] = reserved

    group = check_kept(redis_client, tmp_path, publish(redis_client, tmp_path, spoil), "SUCCEEDED")
    np.testing.assert_array_equal(group[f"measurement/{reserved}_"][()], COUNTS)
    assert group["instrument/positioners_start/m"][()] == 0.0


def test_a_point_too_large_skips_that_channel_only(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        channel(doc, "axis:m")["shape"] = [100000, 100000]

    group = check_kept(
        redis_client,
        tmp_path,
        publish(redis_client, tmp_path, spoil),
        "FAULT",
        "is over the limit",
        "channel 'axis:m' is not written",
    )
    assert "m" not in group["instrument"]


@pytest.mark.parametrize("dtype", [">f8", None, 7, ""])
def test_a_bad_dtype_invalidates_that_channel_only(
    redis_client: redis.Redis, tmp_path: Path, dtype: object
) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        channel(doc, "axis:m")["dtype"] = dtype

    check_kept(
        redis_client, tmp_path, publish(redis_client, tmp_path, spoil), "FAULT", "channel 'axis:m'"
    )


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (lambda d: d.update(shape=[-1]), "scan shape [-1] is not a list of positive integers"),
        (lambda d: d.update(shape="five"), "scan shape 'five'"),
        (lambda d: d["user"].update({"a-b": 1, "a_b": 2}), "'a_b' is stored as 'a_b_2'"),
        (lambda d: d["user"].update(big=2**70), "cannot be stored as a number"),
        (lambda d: d["positioners"]["start"]["m"].update(value=None), "is not a number"),
        (
            lambda d: d["positioners"]["start"].update({"m:x": {"value": 1}, "m/x": {"value": 2}}),
            "'m/x' is stored as 'm_x_2'",
        ),
        (lambda d: d["positioners"]["start"]["m"].update(encoder=12), None),
        (lambda d: d.update(positioners=[1, 2]), "is not an object"),
    ],
    ids=[
        "shape-negative",
        "shape-text",
        "metadata-same-name",
        "metadata-huge-int",
        "positioner-null",
        "motors-same-name",
        "positioner-extra-field",
        "positioners-list",
    ],
)
def test_metadata_problems_never_cost_measured_data(
    redis_client: redis.Redis,
    tmp_path: Path,
    spoil: Callable[[dict[str, Any]], object],
    needle: str | None,
) -> None:
    group = check_kept(
        redis_client,
        tmp_path,
        publish(redis_client, tmp_path, spoil),
        "SUCCEEDED",
        *([needle] if needle else []),
    )
    np.testing.assert_array_equal(group["measurement/m"][()], COUNTS)
    assert text(group["metadata/sample"]) == "gold"


def diode_scan(client: redis.Redis, root: Path, firsts: list[int], end: int) -> str:
    """A scan of one float channel whose entries, written raw, hold points
    ``first .. first + 9`` (their values are their indices), then the end marker."""
    scan = started_scan(
        SessionPublisher(client, "bad"),
        name="ct",
        title="ct",
        file=str(root / "bad.h5"),
        channels=[{"name": "diode", "dtype": "<f8"}],
    )
    stream = Keys.channel(scan.key, 0)
    for first in firsts:
        values = np.arange(first, first + 10, dtype="<f8")
        client.xadd(stream, {"i": first, "n": 10, "d": values.tobytes()})
    client.xadd(stream, {"end": end})
    scan.close()
    return scan.key


def test_trimmed_first_points_are_reported_and_read_as_nan(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Defect 6: a MAXLEN cap trimmed the channel's first entries before they were read."""
    scan = started_scan(
        SessionPublisher(redis_client, "bad"),
        name="ct",
        title="ct",
        file=str(tmp_path / "bad.h5"),
        channels=[{"name": "diode", "dtype": "<f8"}],
    )
    for first in range(0, 100, 10):
        scan.send("diode", np.arange(first, first + 10, dtype=float))
    scan.close()
    redis_client.xtrim(
        Keys.channel(scan.key, 0), minid=_id_of_entry(redis_client, scan.key, 3), approximate=False
    )
    writer = write_scan(redis_client, scan.key)
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    data = group["measurement/diode"][()]
    assert np.isnan(data[:30]).all()  # never shown as data
    np.testing.assert_array_equal(data[30:], np.arange(30, 100, dtype=float))
    assert any("points 0..29 were trimmed" in m for m in messages(group))
    diode = group["instrument/diode"]
    assert diode["missing_points"][()].tolist() == [[0, 30]]
    assert [r.decode() for r in diode["missing_reasons"][()]] == ["trimmed"]


def test_points_a_publisher_skipped_are_told_from_trimmed_ones(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Defect 6: a publisher's gap was reported as 'trimmed from Redis'."""
    writer = write_scan(redis_client, diode_scan(redis_client, tmp_path, [0, 20], 30))
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    data = group["measurement/diode"][()]
    assert np.isnan(data[10:20]).all()
    np.testing.assert_array_equal(data[20:], np.arange(20.0, 30.0))
    assert any("points 10..19 were never published" in m for m in messages(group))
    diode = group["instrument/diode"]
    assert diode["missing_points"][()].tolist() == [[10, 10]]
    assert [r.decode() for r in diode["missing_reasons"][()]] == ["never published"]


def test_an_overlapping_entry_keeps_its_new_points(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Defect 6: an entry repeating some points was dropped whole, with its new ones."""
    writer = write_scan(redis_client, diode_scan(redis_client, tmp_path, [0, 5], 15))
    assert writer.state is State.FAULT  # the repeat is reported
    group = entry(tmp_path)
    np.testing.assert_array_equal(group["measurement/diode"][()], np.arange(15.0))
    assert any("points 5..9 repeat: only the new ones, from 10" in m for m in messages(group))


def _id_of_entry(client: redis.Redis, key: str, position: int) -> str:
    entries = cast(list[tuple[bytes, Any]], client.xrange(Keys.channel(key, 0)))
    raw = entries[position][0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@pytest.mark.parametrize("index", [10**11, 2**62])
def test_a_huge_point_index_is_refused_at_once(
    redis_client: redis.Redis, tmp_path: Path, index: int
) -> None:
    """Defect 2: a mesh whose entry says i = 10**11 (or 2**62) used to hang the shared
    consumer (building the mesh plot) or make a dataset of 4.6e18 rows, SUCCEEDED."""
    scan = started_scan(
        SessionPublisher(redis_client, "bad"),
        name="amesh",
        title="amesh",
        file=str(tmp_path / "bad.h5"),
        channels=[
            {"name": "axis:m", "dtype": "<f8", "role": "positioner"},
            {"name": "axis:n", "dtype": "<f8", "role": "positioner"},
            {"name": "simu:diode", "dtype": "<f8"},
        ],
        shape=[4, 3],
        plots=[Plot("mesh", ("simu:diode",), ("axis:m", "axis:n"))],
    )
    for name in ("axis:m", "axis:n", "simu:diode"):
        scan.send(name, np.arange(12.0))
    stream = Keys.channel(scan.key, 2)
    redis_client.xadd(stream, {"i": index, "n": 1, "d": np.float64(1.0).tobytes()})
    scan.close()
    started = time.monotonic()
    writer = write_scan(redis_client, scan.key)
    assert time.monotonic() - started < 10
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    assert group["measurement/diode"].shape == (12,)
    assert any("beyond the limit" in m for m in messages(group))
    assert group["plot_mesh/diode"].shape == (3, 4)


def test_huge_metadata_is_kept_as_json_text_and_written_at_once(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Defect 4: 200,000 metadata keys took 25 s of the consumer shared by every scan."""
    user = {f"key{i}": i for i in range(200_000)}
    key = publish(redis_client, tmp_path, lambda d: d["user"].update(user))
    started = time.monotonic()
    check_kept(redis_client, tmp_path, key, "SUCCEEDED", "--max-metadata-items")
    assert time.monotonic() - started < 10
    stored = json.loads(text(entry(tmp_path)["metadata/json"]))
    assert stored == {"sample": "gold", **user}


def test_one_scans_metadata_does_not_hold_up_another_scan(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Two scans share one consumer thread: while the first makes its entry (9,000
    metadata items, about a second of HDF5 work), the second is written meanwhile."""
    user = {f"key{i}": i for i in range(9_000)}
    big = publish(redis_client, tmp_path, lambda d: d["user"].update(user))
    thread = Thread(name="consumers")
    thread.start()
    try:
        big_writer = NexusScanWriter(redis_client, big, consumer_thread=thread)
        big_writer.start()
        # Its consumer has the document and is making the entry (private state: the only
        # way to see that moment from outside).
        wait_until(lambda: big_writer._document is not None, "the big scan's entry begun")
        small = started_scan(
            SessionPublisher(redis_client, "other"),
            name="ct",
            title="ct",
            file=str(tmp_path / "other.h5"),
            channels=[{"name": "diode", "dtype": "<f8"}],
        )
        small.send("diode", COUNTS)
        small.close()
        seen: list[bool] = []
        small_writer = NexusScanWriter(
            redis_client,
            small.key,
            consumer_thread=thread,
            on_finish=lambda _: seen.append(big_writer._file is None),
        )
        small_writer.start()
        assert small_writer.join(30) and big_writer.join(30)
        assert seen == [True]  # the small scan ended while the big one made its entry
        assert small_writer.state is State.OFF and big_writer.state is State.OFF
    finally:
        thread.stop()


# -- found by a hostile review (issue 9) --------------------------------------------------


def test_a_file_naming_a_directory_is_refused_and_the_directory_left_alone(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "proposal").mkdir()
    (tmp_path / "proposal" / "other.h5").write_bytes(b"another scan's file")
    key = publish(redis_client, tmp_path, lambda d: d.update(file=str(tmp_path / "proposal")))
    writer = write_scan(redis_client, key)
    assert writer.state is State.FAULT and writer.unfinished is None
    assert "exists and is not a regular file" in (writer.statistics().reason or "")
    assert (tmp_path / "proposal" / "other.h5").read_bytes() == b"another scan's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proposal"]


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (
            lambda d: d.update(
                shape=[5, 1],
                plots=[{"name": "m", "signals": ["simu:diode"], "axes": ["axis:m", "axis:m"]}],
            ),
            "the mesh plots not written",
        ),
        (lambda d: d.update(end_time=12345), "'end_time' 12345 is not text"),
        (lambda d: d.update(start_time={"x": 1}), "'start_time'"),
        (lambda d: d.update(plots=[{"name": "p", "signals": [["simu:diode"]]}]), "plot"),
        (lambda d: d.update(plots=[{"signals": ["simu:diode"]}]), "plot"),
        (lambda d: d.update(user=[1, 2]), "user metadata [1, 2] is not an object"),
        (lambda d: d.update(comments=[{"time": "t"}]), "comment"),
        (lambda d: d.update(end_reason="DONE"), "end_reason 'DONE'"),
        (lambda d: d.update(shape=[2**52, 2**52]), "scan shape"),
    ],
    ids=[
        "mesh-refused",
        "end-time-number",
        "start-time-object",
        "plot-nested",
        "plot-no-name",
        "user-list",
        "comment-no-text",
        "end-reason-unknown",
        "shape-overflow",
    ],
)
def test_document_fields_of_the_wrong_kind_never_cost_the_data(
    redis_client: redis.Redis,
    tmp_path: Path,
    spoil: Callable[[dict[str, Any]], object],
    needle: str,
) -> None:
    group = check_kept(
        redis_client, tmp_path, publish(redis_client, tmp_path, spoil), "SUCCEEDED", needle
    )
    np.testing.assert_array_equal(group["measurement/m"][()], COUNTS)


@pytest.mark.parametrize("index", ["abc", 1.5, None, -3, True])
def test_a_channel_with_a_bad_index_costs_that_channel_only(
    redis_client: redis.Redis, tmp_path: Path, index: object
) -> None:
    def spoil(doc: dict[str, Any]) -> None:
        doc["channels"].append({"name": "third", "index": index, "dtype": "<f8"})

    check_kept(
        redis_client, tmp_path, publish(redis_client, tmp_path, spoil), "FAULT", "channel 'third'"
    )


def test_a_bad_scan_number_is_named(redis_client: redis.Redis, tmp_path: Path) -> None:
    key = publish(redis_client, tmp_path, lambda d: d.update(number=float("inf")))
    writer = write_scan(redis_client, key)
    assert writer.state is State.FAULT
    assert "field 'number' must be an integer" in (writer.statistics().reason or "")


def test_a_channel_stream_of_another_type_costs_that_channel_only(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    key = publish(redis_client, tmp_path, lambda d: None)
    redis_client.delete(Keys.channel(key, 0))
    redis_client.set(Keys.channel(key, 0), "not a stream")
    writer = write_scan(redis_client, key)
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    np.testing.assert_array_equal(group["measurement/diode"][()], COUNTS * 10)
    assert any("holds a string, not a stream" in m for m in messages(group))
    assert "end_time" in group


@pytest.mark.parametrize("path", ["/tmp/a\x00b.h5", "/tmp/\udcff.h5"], ids=["nul", "surrogate"])
def test_a_path_that_cannot_be_a_path_is_named(
    redis_client: redis.Redis, tmp_path: Path, path: str
) -> None:
    key = publish(redis_client, tmp_path, lambda d: d.update(file=path))
    writer = write_scan(redis_client, key)
    assert writer.state is State.FAULT and writer.unfinished is None
    assert "cannot be a path" in (writer.statistics().reason or "")


def test_variable_points_that_would_pad_beyond_the_limit_are_refused(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """[1, 1000] then [1000, 1]: padding every point to 1000 x 1000 (the review's case
    was 3e6 x 3e6: 131 TiB, 15 s, SUCCEEDED)."""
    scan = started_scan(
        SessionPublisher(redis_client, "bad"),
        name="ct",
        title="ct",
        file=str(tmp_path / "bad.h5"),
        channels=[{"name": "var", "dtype": "<f8", "shape": [-1, -1], "role": "image"}],
    )
    scan.send("var", [np.ones((1, 1000))])
    scan.send("var", [np.ones((1000, 1))])
    scan.close()
    writer = write_scan(redis_client, scan.key, options=WriterOptions(max_point_bytes=1 << 20))
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    assert group["measurement/var"].shape == (1, 1, 1000)
    assert any("--max-point-bytes" in m for m in messages(group))


def test_channels_beyond_the_limit_are_not_written(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    key = publish(redis_client, tmp_path, lambda d: None)
    writer = write_scan(redis_client, key, options=WriterOptions(max_channels=1))
    assert writer.state is State.FAULT
    group = entry(tmp_path)
    np.testing.assert_array_equal(group["measurement/m"][()], COUNTS)
    assert "diode" not in group["measurement"]
    assert any("1 channels beyond the first 1 (--max-channels)" in m for m in messages(group))


# The document nests 2 levels above the spliced value: the document's object and "user".
@pytest.mark.parametrize("depth", [40, MAX_DOCUMENT_DEPTH - 2, MAX_DOCUMENT_DEPTH - 1, 5000])
def test_deeply_nested_metadata_never_costs_the_data(
    redis_client: redis.Redis, tmp_path: Path, depth: int
) -> None:
    key = publish(redis_client, tmp_path, lambda d: d["user"].update(deep="PLACEHOLDER"))
    # Python's json cannot write 5000 levels: the text is spliced in.
    deep_text = '{"n": ' * (depth - 1) + "{}" + "}" * (depth - 1)
    raw = cast(bytes, redis_client.get(key)).decode().replace('"PLACEHOLDER"', deep_text)
    assert nesting_depth(raw.encode()) == depth + 2
    redis_client.set(key, raw)
    if depth + 2 <= MAX_DOCUMENT_DEPTH:  # read, and stored as one JSON text
        group = check_kept(redis_client, tmp_path, key, "SUCCEEDED", "levels deep")
        assert json.loads(text(group["metadata/json"]))["deep"] == json.loads(deep_text)
    else:  # refused on every Python (3.13's json would read 5000 levels, 3.11's not)
        writer = write_scan(redis_client, key)
        assert writer.state is State.FAULT
        assert f"nested too deeply to read (more than {MAX_DOCUMENT_DEPTH} levels" in (
            writer.statistics().reason or ""
        )
        assert writer.unfinished is None

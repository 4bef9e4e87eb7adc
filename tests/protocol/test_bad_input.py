"""Malformed input: each error names scan, channel and stream id, and nothing else is lost."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import redis

from nexus_writer.protocol import (
    DataLostError,
    Keys,
    MalformedEntryError,
    PointsEvent,
    ProtocolError,
    ScanNotFoundError,
    ScanPublisher,
    ScanReader,
    SessionPublisher,
    SessionReader,
    UnsupportedProtocolError,
)
from tests.protocol.helpers import errors_of, points_of, read_all


def two_channel_scan(client: redis.Redis, **channel_b: object) -> ScanPublisher:
    spec: dict[str, object] = {"name": "b", "dtype": "<f8", "shape": [3], "role": "spectrum"}
    spec.update(channel_b)
    scan = SessionPublisher(client, "bad").new_scan(
        name="loopscan",
        title="loopscan 4",
        file="/x.h5",
        channels=[{"name": "a", "dtype": "<i4"}, spec],
    )
    scan.prepare()
    scan.start()
    return scan


def xadd(client: redis.Redis, stream: str, **fields: object) -> str:
    return str(client.xadd(stream, fields).decode())  # type: ignore[arg-type, union-attr]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"i": 2, "n": 2, "d": np.zeros((2, 4)).tobytes()},
            r"payload has 64 bytes; 2 points of shape \(3,\)",
        ),
        ({"i": 2, "n": 2}, "no payload"),
        ({"i": "two", "n": 2, "d": b""}, "field 'i' is not an integer"),
        ({"n": 2, "d": b""}, "field 'i' is missing"),
        ({"i": 2, "n": 0, "d": b""}, "bad point range"),
        ({"i": 2, "n": 1, "r": "{}"}, "frame reference in a channel that holds data"),
    ],
    ids=["wrong-shape", "no-payload", "bad-index", "missing-index", "empty-range", "stray-ref"],
)
def test_malformed_entry_is_reported_and_reading_goes_on(
    redis_client: redis.Redis, fields: dict[str, object], reason: str
) -> None:
    scan = two_channel_scan(redis_client)
    scan.send("a", [1, 2])
    scan.send("b", np.ones((2, 3)))
    bad_id = xadd(redis_client, Keys.channel(scan.key, 1), **fields)
    scan.send("a", [3, 4])
    scan.close()
    events = read_all(ScanReader(redis_client, scan.key))
    errors = errors_of(events)
    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, MalformedEntryError)
    assert (error.scan, error.channel, error.stream_id) == (scan.key, "b", bad_id)
    assert scan.key in str(error) and "'b'" in str(error) and bad_id in str(error)
    assert re.search(reason, error.reason)
    np.testing.assert_array_equal(points_of(events, "a"), [1, 2, 3, 4])  # the other channel
    np.testing.assert_array_equal(points_of(events, "b"), np.ones((2, 3)))  # before the bad one


def test_corrupt_variable_shapes_and_frame_references(redis_client: redis.Redis) -> None:
    scan = SessionPublisher(redis_client, "bad").new_scan(
        name="ct",
        title="ct",
        file="/x.h5",
        channels=[
            {"name": "v", "dtype": "<f4", "shape": [-1]},
            {"name": "cam", "dtype": "<u2", "shape": [2, 2], "role": "frame_ref"},
        ],
    )
    v, cam = Keys.channel(scan.key, 0), Keys.channel(scan.key, 1)
    broken_s = xadd(redis_client, v, i=0, n=1, s="[[2]", d=b"\0" * 8)
    short = xadd(redis_client, v, i=0, n=1, s="[[3]]", d=b"\0" * 8)
    good = xadd(redis_client, v, i=0, n=1, s="[[2]]", d=np.array([1, 2], "<f4").tobytes())
    broken_r = xadd(redis_client, cam, i=0, n=1, r="{not json")
    scan.close()
    events = read_all(ScanReader(redis_client, scan.key))
    errors = errors_of(events)
    assert [(e.channel, e.stream_id) for e in errors] == [  # type: ignore[attr-defined]
        ("v", broken_s),
        ("v", short),
        ("cam", broken_r),
    ]
    assert "shorter than its shapes say" in str(errors[1])
    values = [e for e in events if type(e).__name__ == "PointsEvent"]
    assert len(values) == 1 and values[0].stream_id == good  # type: ignore[union-attr]


def test_unknown_dtype_in_the_document_fails_that_channel_only(redis_client: redis.Redis) -> None:
    scan = two_channel_scan(redis_client)
    scan.send("a", [7, 8])
    scan.close()
    doc = json.loads(redis_client.get(scan.key))  # type: ignore[arg-type]
    doc["channels"][1]["dtype"] = "<c16"  # complex: not in the protocol
    redis_client.set(scan.key, json.dumps(doc))
    reader = ScanReader(redis_client, scan.key)
    events = read_all(reader)
    errors = errors_of(events)
    assert len(errors) == 1 and isinstance(errors[0], MalformedEntryError)
    assert errors[0].channel == "b" and errors[0].stream_id == Keys.channel(scan.key, 1)
    assert "not a boolean, integer or float" in str(errors[0])
    np.testing.assert_array_equal(points_of(events, "a"), [7, 8])


def test_unknown_protocol_version_is_refused_naming_both_versions(
    redis_client: redis.Redis,
) -> None:
    scan = two_channel_scan(redis_client)
    doc = json.loads(redis_client.get(scan.key))  # type: ignore[arg-type]
    doc["protocol"] = "2.3"
    redis_client.set(scan.key, json.dumps(doc))
    with pytest.raises(
        UnsupportedProtocolError, match=r"uses protocol 2\.3; this reader knows 1\.x"
    ):
        ScanReader(redis_client, scan.key)
    redis_client.set("nxw:protocol", "2.0")
    with pytest.raises(UnsupportedProtocolError, match=r"holds data of protocol 2\.0"):
        SessionReader(redis_client, "bad")
    with pytest.raises(UnsupportedProtocolError, match=r"holds data of protocol 2\.0"):
        SessionPublisher(redis_client, "bad")
    SessionPublisher(redis_client, "bad", prefix="other")  # another prefix is free


def test_missing_or_broken_document(redis_client: redis.Redis) -> None:
    with pytest.raises(ScanNotFoundError, match=r"'nxw:scan:bad:404' is not in Redis"):
        ScanReader(redis_client, "nxw:scan:bad:404")
    redis_client.set("nxw:scan:bad:1", "{truncated")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        ScanReader(redis_client, "nxw:scan:bad:1")
    redis_client.set("nxw:scan:bad:2", json.dumps({"protocol": "1.0", "key": "k", "channels": []}))
    with pytest.raises(ProtocolError, match="field 'number' must be an integer"):
        ScanReader(redis_client, "nxw:scan:bad:2")


def test_points_trimmed_before_reading_are_reported_as_lost(redis_client: redis.Redis) -> None:
    scan = two_channel_scan(redis_client)
    reader = ScanReader(redis_client, scan.key)
    scan.send("a", [0, 1])
    assert points_of(reader.read(timeout=1.0), "a").tolist() == [0, 1]
    stream = Keys.channel(scan.key, 0)
    for start in range(2, 12, 2):
        scan.send("a", [start, start + 1])
    redis_client.xtrim(stream, maxlen=2, approximate=False)  # keeps points 8..11
    scan.close()
    events = read_all(reader)
    lost = [e for e in errors_of(events) if isinstance(e, DataLostError)]
    assert len(lost) == 1 and (lost[0].channel, lost[0].first, lost[0].count) == ("a", 2, 6)
    assert "points 2..7 were trimmed" in str(lost[0])
    assert points_of(events, "a").tolist() == [8, 9, 10, 11]


def test_overlapping_points_and_unknown_events_are_malformed(redis_client: redis.Redis) -> None:
    scan = two_channel_scan(redis_client)
    scan.send("a", [0, 1])
    overlap = xadd(
        redis_client, Keys.channel(scan.key, 0), i=1, n=1, d=np.array([9], "<i4").tobytes()
    )
    odd = xadd(redis_client, Keys.events(scan.key), event="teleport", time="now")
    scan.close()
    errors = errors_of(read_all(ScanReader(redis_client, scan.key)))
    assert [(e.channel, e.stream_id) for e in errors] == [  # type: ignore[attr-defined]
        ("a", overlap),
        ("(events)", odd),
    ]
    assert "points from 1 repeat: 2 expected" in str(errors[0])


def test_closed_without_end_markers_ends_the_channels_with_an_error(
    redis_client: redis.Redis,
) -> None:
    scan = two_channel_scan(redis_client)
    scan.send("a", [5])
    xadd(
        redis_client,
        Keys.events(scan.key),
        event="state",
        state="CLOSED",
        time="t",
        reason="FAILURE",
        message="publisher crashed",
    )
    reader = ScanReader(redis_client, scan.key)
    events = read_all(reader)
    assert reader.done
    errors = errors_of(events)
    assert sorted(e.channel for e in errors) == ["a", "b"]  # type: ignore[attr-defined]
    assert all("closed without this channel's end marker" in str(e) for e in errors)


def test_a_document_spoilt_mid_scan_is_reported_and_the_points_kept(
    redis_client: redis.Redis,
) -> None:
    """Read again at STARTED and CLOSED: a document that no longer reads is reported and
    the one read before is kept (hostile review, issue 9)."""
    scan = two_channel_scan(redis_client)
    reader = ScanReader(redis_client, scan.key)
    scan.send("a", [0, 1])
    scan.close()
    redis_client.set(scan.key, "not json {")
    events = read_all(reader)
    assert points_of(events, "a").tolist() == [0, 1]
    assert any("kept as read before" in str(e) for e in errors_of(events))
    assert reader.done


def test_integer_fields_are_decimal_only(redis_client: redis.Redis) -> None:
    scan = two_channel_scan(redis_client)
    reader = ScanReader(redis_client, scan.key)
    redis_client.xadd(Keys.channel(scan.key, 0), {"i": " 0 ", "n": "1_0", "d": b"\0" * 80})
    events = reader.read(timeout=1.0)
    assert not [e for e in events if isinstance(e, PointsEvent)]
    assert any("is not an integer" in str(e) for e in errors_of(events))

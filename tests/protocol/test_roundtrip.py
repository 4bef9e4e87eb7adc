"""The reference publisher and reader: every dtype, shape and batching comes back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nexus_writer.protocol import (
    Cursor,
    EndReason,
    Plot,
    Positioner,
    ProtocolError,
    ScanReader,
    ScanState,
    SessionPublisher,
    SessionReader,
    StateEvent,
)
from tests.protocol.helpers import errors_of, points_of, read_all

DTYPES = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from([(), (1,), (7,), (3, 4)]),
    batches=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6),
    data=st.data(),
)
def test_points_come_back_bit_for_bit(
    redis_client: redis.Redis,
    dtype: str,
    shape: tuple[int, ...],
    batches: list[int],
    data: st.DataObject,
) -> None:
    total = sum(batches)
    values = data.draw(hnp.arrays(np.dtype(dtype), (total, *shape)))
    scan = SessionPublisher(redis_client, "hyp").new_scan(
        name="loopscan",
        title="loopscan",
        file="/tmp/x.h5",
        shape=(total,),
        channels=[{"name": "c", "dtype": dtype, "shape": list(shape)}],
    )
    scan.prepare()
    scan.start()
    offset = 0
    for size in batches:
        scan.send("c", values[offset : offset + size])
        offset += size
    scan.close()
    events = read_all(ScanReader(redis_client, scan.key))
    got = points_of(events, "c")
    assert got.dtype == np.dtype(dtype) and got.shape == values.shape
    assert got.tobytes() == values.tobytes()  # NaNs included
    assert errors_of(events) == []


def test_document_carries_metadata_and_end(redis_client: redis.Redis) -> None:
    session = SessionPublisher(redis_client, "meta")
    scan = session.new_scan(
        name="amesh",
        title="amesh robx 0 1 2 roby 0 1 1 0.1",
        file="/data/m.h5",
        shape=(3, 2),
        channels=[
            {"name": "robx", "dtype": "float64", "role": "positioner", "unit": "mm"},
            {"name": "roby", "dtype": "float64", "role": "positioner", "unit": "mm"},
            {"name": "diode", "dtype": "float32"},
        ],
        user={"sample": "Si", "proposal": "ma1234"},
        positioners={"robx": Positioner(0.0, "mm"), "roby": 5.0},
        plots=[Plot("diode", ("diode",), ("robx", "roby"))],
    )
    assert scan.document.number == 1
    scan.prepare()
    scan.start()
    scan.comment("first")
    scan.comment("second")
    scan.stop()
    scan.close(EndReason.FAILURE, "detector timeout", positioners={"robx": 1.0})
    reader = ScanReader(redis_client, scan.key)
    events = read_all(reader)
    doc = reader.document
    assert doc.type == "amesh" and doc.shape == (3, 2) and doc.npoints == 6
    assert doc.user == {"sample": "Si", "proposal": "ma1234"}
    assert doc.positioners_start == {"robx": Positioner(0.0, "mm"), "roby": Positioner(5.0)}
    assert doc.positioners_end == {"robx": Positioner(1.0)}
    assert [text for _, text in doc.comments] == ["first", "second"]
    assert (doc.end_reason, doc.end_message) == (EndReason.FAILURE, "detector timeout")
    assert doc.start_time is not None and doc.end_time is not None
    closed = [e for e in events if isinstance(e, StateEvent)][-1]
    assert closed.state is ScanState.CLOSED and closed.reason is EndReason.FAILURE
    assert session.new_scan(name="ct", title="ct", file="/x.h5", channels=[]).document.number == 2


def test_illegal_state_moves_and_bad_points_are_refused(redis_client: redis.Redis) -> None:
    scan = SessionPublisher(redis_client, "s").new_scan(
        name="ct", title="ct", file="/x.h5", channels=[{"name": "m", "dtype": "<u4", "shape": [4]}]
    )
    with pytest.raises(ValueError, match="cannot go from CREATED to STOPPED"):
        scan.stop()
    with pytest.raises(ValueError, match=r"points of shape \(5,\) given, \(4,\) expected"):
        scan.send("m", np.zeros((2, 5)))
    with pytest.raises(KeyError, match="no channel 'nope'"):
        scan.send("nope", [1])
    with pytest.raises(ProtocolError, match="not a boolean, integer or float"):
        SessionPublisher(redis_client, "s").new_scan(
            name="ct", title="ct", file="/x.h5", channels=[{"name": "t", "dtype": "U8"}]
        )
    with pytest.raises(ValueError, match="may only have letters"):
        SessionPublisher(redis_client, "bad session")


def test_reader_resumes_from_its_cursor_without_loss_or_repeat(redis_client: redis.Redis) -> None:
    scan = SessionPublisher(redis_client, "resume").new_scan(
        name="timescan", title="timescan", file="/x.h5", channels=[{"name": "c", "dtype": "<i8"}]
    )
    scan.prepare()
    scan.start()
    for start in range(0, 50, 5):
        scan.send("c", np.arange(start, start + 5))
    first = ScanReader(redis_client, scan.key, count=3)  # three entries a read: stops midway
    seen = first.read(timeout=1.0)
    cursor = first.cursor()
    assert isinstance(cursor, Cursor) and cursor.next_index == {"c": 15}
    for start in range(50, 100, 5):
        scan.send("c", np.arange(start, start + 5))
    scan.close()
    second = ScanReader(redis_client, scan.key, cursor=cursor)  # "after a restart"
    rest = read_all(second)
    np.testing.assert_array_equal(points_of(seen + rest, "c"), np.arange(100))
    assert errors_of(seen + rest) == []


def test_session_reader_sees_new_scans_and_resumes(redis_client: redis.Redis) -> None:
    publisher = SessionPublisher(redis_client, "follow")
    publisher.new_scan(name="old", title="old", file="/x.h5", channels=[])
    reader = SessionReader(redis_client, "follow")  # "$": only scans from now on
    assert reader.read(timeout=0.05) == []
    publisher.new_scan(name="a", title="a", file="/x.h5", channels=[])
    assert [a.name for a in reader.read(timeout=1.0)] == ["a"]
    resumed = SessionReader(redis_client, "follow", since=reader.position)
    publisher.new_scan(name="b", title="b", file="/x.h5", channels=[])
    assert [a.name for a in resumed.read(timeout=1.0)] == ["b"]
    everything = SessionReader(redis_client, "follow", since="0-0").read(timeout=1.0)
    assert [a.name for a in everything] == ["old", "a", "b"]

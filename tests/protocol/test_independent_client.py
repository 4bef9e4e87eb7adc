"""A publisher written from docs/protocol.md alone, with raw Redis commands: the reference
reader must read back exactly what it published.

Nothing from nexus_writer.protocol is used to *publish* here: only redis-py's generic
``execute_command``, JSON and numpy's byte layout, as a client in another language would.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import redis

from nexus_writer.protocol import (
    ChannelEndEvent,
    CommentEvent,
    EndReason,
    FrameRefsEvent,
    PointsEvent,
    ScanReader,
    ScanState,
    SessionReader,
    StateEvent,
)
from tests.protocol.helpers import read_all

SCAN = "nxw:scan:demo:7-a1b2c3d4"
T = "2026-11-21T13:00:26.468000+01:00"


def raw(r: redis.Redis, *args: object) -> object:
    """One Redis command, spelled as in the protocol document."""
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


def document(**changes: object) -> str:
    doc = {
        "protocol": "1.0",
        "key": SCAN,
        "session": "demo",
        "name": "ascan",
        "number": 7,
        "title": "ascan robx 0 1 3 0.1",
        "type": "ascan",
        "file": "/data/demo/demo.h5",
        "shape": [4],
        "start_time": None,
        "end_time": None,
        "end_reason": None,
        "end_message": None,
        "user": {"sample": "quartz"},
        "comments": [],
        "positioners": {"start": {"robx": {"value": 0.0, "unit": "mm"}}, "end": {}},
        "plots": [{"name": "diode", "signals": ["diode"], "axes": ["robx"]}],
        "channels": [
            {
                "name": "robx",
                "index": 0,
                "dtype": "<f8",
                "shape": [],
                "role": "positioner",
                "unit": "mm",
            },
            {
                "name": "diode",
                "index": 1,
                "dtype": "<i4",
                "shape": [],
                "role": "counter",
                "unit": None,
            },
            {
                "name": "mca",
                "index": 2,
                "dtype": "<u4",
                "shape": [8],
                "role": "spectrum",
                "unit": "counts",
            },
            {
                "name": "trace",
                "index": 3,
                "dtype": "<f4",
                "shape": [-1],
                "role": "spectrum",
                "unit": None,
            },
            {
                "name": "cam",
                "index": 4,
                "dtype": "<u2",
                "shape": [3, 2],
                "role": "frame_ref",
                "unit": None,
            },
        ],
    }
    doc.update(changes)
    return json.dumps(doc)


def publish_by_hand(r: redis.Redis) -> dict[str, Any]:
    """The example of docs/protocol.md section 9, extended to every kind of channel."""
    x = np.array([0.0, 0.25, 0.5, 0.75], "<f8")
    diode = np.array([3, -1, 2**31 - 1, 0], "<i4")
    mca = np.arange(32, dtype="<u4").reshape(4, 8)
    traces = [np.arange(n, dtype="<f4") * 1.5 for n in (1, 4, 2, 3)]
    raw(r, "SET", "nxw:protocol", "1.0", "NX")
    raw(r, "SET", SCAN, document())
    raw(r, "XADD", f"{SCAN}:events", "*", "event", "state", "state", "CREATED", "time", T)
    raw(r, "XADD", "nxw:session:demo:scans", "*", "key", SCAN, "name", "ascan", "number", "7")
    raw(r, "XADD", f"{SCAN}:events", "*", "event", "state", "state", "PREPARED", "time", T)
    raw(r, "SET", SCAN, document(start_time=T))
    raw(r, "XADD", f"{SCAN}:events", "*", "event", "state", "state", "STARTED", "time", T)
    # Points in batches of different sizes, as a real system sends them.
    raw(r, "XADD", f"{SCAN}:ch:0", "*", "i", "0", "n", "1", "d", x[:1].tobytes())
    raw(r, "XADD", f"{SCAN}:ch:0", "*", "i", "1", "n", "3", "d", x[1:].tobytes())
    raw(r, "XADD", f"{SCAN}:ch:1", "*", "i", "0", "n", "4", "d", diode.tobytes())
    raw(r, "XADD", f"{SCAN}:ch:2", "*", "i", "0", "n", "2", "d", mca[:2].tobytes())
    raw(r, "XADD", f"{SCAN}:ch:2", "*", "i", "2", "n", "2", "d", mca[2:].tobytes())
    raw(
        r,
        "XADD",
        f"{SCAN}:ch:3",
        "*",
        "i",
        "0",
        "n",
        "4",
        "s",
        json.dumps([[len(t)] for t in traces]),
        "d",
        b"".join(t.tobytes() for t in traces),
    )
    ref = {"file": "/data/demo/cam_0000.h5", "dataset": "/entry_0000/measurement/data", "frame": 0}
    raw(r, "XADD", f"{SCAN}:ch:4", "*", "i", "0", "n", "3", "r", json.dumps(ref))
    ref = {"file": "/data/demo/cam_0001.h5", "dataset": "/entry_0000/measurement/data", "frame": 0}
    raw(r, "XADD", f"{SCAN}:ch:4", "*", "i", "3", "n", "1", "r", json.dumps(ref))
    raw(r, "XADD", f"{SCAN}:events", "*", "event", "comment", "time", T, "text", "beam lost?")
    raw(r, "XADD", f"{SCAN}:events", "*", "event", "state", "state", "STOPPED", "time", T)
    for index in range(5):
        raw(r, "XADD", f"{SCAN}:ch:{index}", "*", "end", "4")
    end = {"robx": {"value": 0.75, "unit": "mm"}}
    raw(
        r,
        "SET",
        SCAN,
        document(
            start_time=T,
            end_time=T,
            end_reason="USER_ABORT",
            end_message="stopped by user",
            comments=[{"time": T, "text": "beam lost?"}],
            positioners={"start": {"robx": {"value": 0.0, "unit": "mm"}}, "end": end},
        ),
    )
    raw(
        r,
        "XADD",
        f"{SCAN}:events",
        "*",
        "event",
        "state",
        "state",
        "CLOSED",
        "time",
        T,
        "reason",
        "USER_ABORT",
        "message",
        "stopped by user",
    )
    for key in (SCAN, f"{SCAN}:events", *(f"{SCAN}:ch:{i}" for i in range(5))):
        raw(r, "EXPIRE", key, 604800)
    return {"robx": x, "diode": diode, "mca": mca, "trace": traces}


def test_reference_reader_reads_a_hand_published_scan_exactly(redis_client: redis.Redis) -> None:
    announcements = SessionReader(redis_client, "demo", since="0-0").read(timeout=1.0)
    assert announcements == []
    expected = publish_by_hand(redis_client)
    announced = SessionReader(redis_client, "demo", since="0-0").read(timeout=1.0)
    assert [(a.key, a.name, a.number) for a in announced] == [(SCAN, "ascan", 7)]

    reader = ScanReader(redis_client, SCAN)
    events = read_all(reader)

    for name in ("robx", "diode", "mca"):
        parts = [e for e in events if isinstance(e, PointsEvent) and e.channel.name == name]
        got = np.concatenate([p.data for p in parts])
        assert got.dtype == expected[name].dtype
        np.testing.assert_array_equal(got, expected[name])
    traces = [e for e in events if isinstance(e, PointsEvent) and e.channel.name == "trace"]
    assert len(traces) == 1
    for got, want in zip(traces[0].data, expected["trace"], strict=True):
        np.testing.assert_array_equal(got, want)
    refs = [e for e in events if isinstance(e, FrameRefsEvent)]
    assert [(r.first, r.count, r.ref.file, r.ref.frame) for r in refs] == [
        (0, 3, "/data/demo/cam_0000.h5", 0),
        (3, 1, "/data/demo/cam_0001.h5", 0),
    ]
    ends = {e.channel.name: e.total for e in events if isinstance(e, ChannelEndEvent)}
    assert ends == dict.fromkeys(["robx", "diode", "mca", "trace", "cam"], 4)
    states = [e.state for e in events if isinstance(e, StateEvent)]
    assert states == [
        ScanState.CREATED,
        ScanState.PREPARED,
        ScanState.STARTED,
        ScanState.STOPPED,
        ScanState.CLOSED,
    ]
    closed = [e for e in events if isinstance(e, StateEvent)][-1]
    assert (closed.reason, closed.message) == (EndReason.USER_ABORT, "stopped by user")
    assert [e.text for e in events if isinstance(e, CommentEvent)] == ["beam lost?"]
    assert [e for e in events if type(e).__name__ == "ErrorEvent"] == []

    doc = reader.document
    assert doc.end_reason is EndReason.USER_ABORT and doc.end_time == T
    assert doc.positioners_end["robx"].value == 0.75 and doc.user == {"sample": "quartz"}
    assert doc.plots[0].axes == ("robx",) and doc.channel("mca").unit == "counts"

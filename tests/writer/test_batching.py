"""How the scan writer groups a batch's points into writes (scan_writer._contiguous)."""

from __future__ import annotations

import numpy as np

from nexus_writer.protocol import Channel, PointsEvent
from nexus_writer.protocol.reader import JOIN_LIMIT
from nexus_writer.scan_writer import _contiguous

SCALAR = Channel("c", 0, "<f8")
FRAME = Channel("f", 1, "<u1", (JOIN_LIMIT,))


def part(channel: Channel, first: int, count: int) -> PointsEvent:
    data = np.arange(first, first + count, dtype="<f8")
    if channel.shape:
        data = np.zeros((count, *channel.shape), channel.numpy_dtype) + first
    return PointsEvent(channel, first, data, "0-0")


def test_consecutive_small_parts_join_and_a_gap_starts_a_new_write() -> None:
    runs = _contiguous([part(SCALAR, 0, 3), part(SCALAR, 3, 2), part(SCALAR, 9, 1)])
    assert [(first, len(data)) for first, data in runs] == [(0, 5), (9, 1)]
    np.testing.assert_array_equal(runs[0][1], np.arange(5))


def test_large_parts_are_written_as_they_are() -> None:
    frames = [part(FRAME, 0, 1), part(FRAME, 1, 1)]
    runs = _contiguous(frames)
    assert [first for first, _ in runs] == [0, 1]
    assert runs[0][1] is frames[0].data  # not copied
    mixed = _contiguous([part(SCALAR, 0, 2), part(FRAME, 2, 1), part(SCALAR, 3, 1)])
    assert [(first, len(data)) for first, data in mixed] == [(0, 2), (2, 1), (3, 1)]

"""Helpers for protocol tests: drain a reader, gather points per channel."""

from __future__ import annotations

from typing import Any

import numpy as np

from nexus_writer.protocol import ErrorEvent, PointsEvent, ScanEvent, ScanReader


def read_all(reader: ScanReader, rounds: int = 200) -> list[ScanEvent]:
    """Everything the reader has to give, until it is done (bounded)."""
    events: list[ScanEvent] = []
    for _ in range(rounds):
        if reader.done:
            return events
        events.extend(reader.read(timeout=1.0))
    raise AssertionError(f"the reader of {reader.key} never finished")


def points_of(events: list[ScanEvent], channel: str) -> np.ndarray[Any, Any]:
    """All points of a fixed-shape channel, in order, as one array."""
    parts = [e for e in events if isinstance(e, PointsEvent) and e.channel.name == channel]
    assert [p.first for p in parts] == sorted(p.first for p in parts)
    return np.concatenate([p.data for p in parts])


def errors_of(events: list[ScanEvent]) -> list[Exception]:
    return [e.error for e in events if isinstance(e, ErrorEvent)]

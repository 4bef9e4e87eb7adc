"""Errors of the scan-data protocol: each names the scan, and where it applies the channel
and the Redis stream entry, so that a user can find what was wrong.

.. important::
   Plain exception classes: they belong to no thread or hub.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Something in Redis does not follow docs/protocol.md."""


class UnsupportedProtocolError(ProtocolError):
    """The data were published with a protocol version this reader does not know."""


class ScanNotFoundError(ProtocolError):
    """The scan document is not in Redis (never published, or expired)."""


class MalformedEntryError(ProtocolError):
    """One stream entry of one channel cannot be decoded.

    The reader reports it and goes on with the entries and channels that follow.
    """

    def __init__(self, scan: str, channel: str, stream_id: str, reason: str) -> None:
        super().__init__(f"scan {scan!r}, channel {channel!r}, entry {stream_id}: {reason}")
        self.scan = scan
        self.channel = channel
        self.stream_id = stream_id
        self.reason = reason


class DataLostError(ProtocolError):
    """Points of a channel left Redis (trimmed or expired) before they were read."""

    def __init__(self, scan: str, channel: str, first: int, count: int, stream_id: str) -> None:
        last = first + count - 1
        super().__init__(
            f"scan {scan!r}, channel {channel!r}: points {first}..{last} were trimmed from Redis "
            f"before they were read (next entry read: {stream_id}); raise the publisher's "
            "maxlen or read faster"
        )
        self.scan = scan
        self.channel = channel
        self.first = first
        self.count = count
        self.stream_id = stream_id


class GapError(ProtocolError):
    """The publisher skipped points of a channel: an entry's first index is past the next
    one expected, and nothing was trimmed in between."""

    def __init__(self, scan: str, channel: str, first: int, count: int, stream_id: str) -> None:
        last = first + count - 1
        super().__init__(
            f"scan {scan!r}, channel {channel!r}: points {first}..{last} were never published "
            f"(entry {stream_id} starts at {first + count}): they read as missing"
        )
        self.scan = scan
        self.channel = channel
        self.first = first
        self.count = count
        self.stream_id = stream_id


class LeaseLost(Exception):
    """This process no longer holds the session's writer lease (docs/operations.md):
    another writer service may write the session now, so this one must not."""

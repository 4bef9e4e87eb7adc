"""Reading scans back: cursors over a session's announcements and over all streams of a scan.

.. important::
   A reader belongs to one greenlet or thread at a time (it keeps its positions). It works
   in greenlets of any gevent hub, without monkey-patching, and in plain threads: a blocking
   read yields to the hub in the first case and blocks natively in the second.

Readers are resumable: :meth:`ScanReader.cursor` and :attr:`SessionReader.position` say how
far they got, and a new reader made from them goes on from there, so a restarted reader
loses nothing that is still in Redis. Malformed entries become :class:`ErrorEvent` objects
that name the scan, channel and stream id; reading goes on with what follows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import redis

from ._xread import Entries, check_client, fields_of, xread
from .encoding import Decoded, EntryError, FrameRef, decode, fast_fixed, points_array
from .errors import (
    DataLostError,
    GapError,
    LeaseLost,
    MalformedEntryError,
    ProtocolError,
    ScanNotFoundError,
)
from .keys import DEFAULT_PREFIX, Keys, text
from .model import Channel, EndReason, ScanDocument, ScanState

_log = logging.getLogger(__name__)

#: A channel's points: one array of shape (n, *shape), or a list of arrays (variable shapes).
Points: TypeAlias = "np.ndarray[Any, Any] | list[np.ndarray[Any, Any]]"

#: Consecutive entries of a channel are joined into one event up to about this many bytes.
JOIN_LIMIT = 256 * 1024
#: A read asks for at most about this many bytes of its largest channel, so that large
#: frames arrive in several reads and the consumer can write while the next one comes.
READ_BYTES = 16 * 1024 * 1024

# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointsEvent:
    """Points ``first`` .. ``first + len(data) - 1`` of a channel: one or more consecutive
    entries; ``stream_id`` is that of the last, ``first_stream_id`` that of the first."""

    channel: Channel
    first: int
    data: (
        np.ndarray[Any, Any] | list[np.ndarray[Any, Any]]
    )  #: shape ``(n, *shape)``; a list for variable shapes
    stream_id: str
    first_stream_id: str = ""  #: "" when the event is one entry (``stream_id``)

    @property
    def count(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FrameRefsEvent:
    """Points ``first`` .. ``first + count - 1`` are frames ``ref.frame`` ... of a file."""

    channel: Channel
    first: int
    count: int
    ref: FrameRef
    stream_id: str


@dataclass(frozen=True)
class ChannelEndEvent:
    """No more points will come for ``channel``; it has ``total`` in all."""

    channel: Channel
    total: int


@dataclass(frozen=True)
class StateEvent:
    state: ScanState
    time: str
    reason: EndReason | None = None
    message: str | None = None


@dataclass(frozen=True)
class CommentEvent:
    time: str
    text: str


@dataclass(frozen=True)
class ErrorEvent:
    """A malformed entry or lost points; the reader went on after it."""

    error: ProtocolError


ScanEvent = PointsEvent | FrameRefsEvent | ChannelEndEvent | StateEvent | CommentEvent | ErrorEvent


@dataclass(frozen=True)
class Cursor:
    """How far a :class:`ScanReader` got: the last id read of each stream and the next point
    index expected on each channel."""

    ids: Mapping[str, str] = field(default_factory=dict)
    next_index: Mapping[str, int] = field(default_factory=dict)


# -- scan reader --------------------------------------------------------------------------

#: A scan document nested deeper than this (objects and arrays) is refused, whatever the
#: Python version (3.13's JSON parser reads thousands of levels, 3.10-3.12's about 1000).
MAX_DOCUMENT_DEPTH = 512

# A JSON string, escapes included: removed before the brackets are counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def nesting_depth(raw: bytes) -> int:
    """How deeply a JSON text nests objects and arrays: 0 for a scalar, 1 for ``{}``.

    Counted on the text, without parsing it: linear and at C speed (strings are removed
    by a regular expression, the brackets summed with numpy).
    """
    codes = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    steps = np.zeros(len(codes), dtype=np.int32)
    steps[(codes == ord("{")) | (codes == ord("["))] = 1
    steps[(codes == ord("}")) | (codes == ord("]"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def too_deep(raw: bytes) -> bool:
    """Whether a JSON text nests objects and arrays more than :data:`MAX_DOCUMENT_DEPTH`
    levels deep (most documents have too few brackets to need counting)."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_DOCUMENT_DEPTH:
        return False
    return nesting_depth(raw) > MAX_DOCUMENT_DEPTH


def load_document(client: redis.Redis, key: str) -> ScanDocument:
    """The scan document stored at ``key``.

    Raises:
        ScanNotFoundError: nothing at ``key``.
        UnsupportedProtocolError: a protocol major version other than ours.
        ProtocolError: the document is not valid JSON or misses fields.
    """
    raw = client.get(key)
    if raw is None:
        raise ScanNotFoundError(f"scan {key!r} is not in Redis (never published, or expired)")
    if too_deep(raw if isinstance(raw, bytes) else str(raw).encode()):
        raise ProtocolError(
            f"scan document {key!r} is nested too deeply to read "
            f"(more than {MAX_DOCUMENT_DEPTH} levels of objects and arrays)"
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"scan document {key!r} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError(f"scan document {key!r} is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"scan document {key!r} is not a JSON object")
    return ScanDocument.from_json(data)


class ScanReader:
    """Reads every stream of one scan: its events and all its channels, in one XREAD."""

    def __init__(
        self, client: redis.Redis, key: str, cursor: Cursor | None = None, count: int = 1000
    ) -> None:
        """``count``: at most this many entries per stream and read.

        Raises:
            ScanNotFoundError, UnsupportedProtocolError, ProtocolError: see
                :func:`load_document`.
        """
        check_client(client)
        self.client = client
        self.key = key
        self.document = load_document(client, key)
        largest = max((c.point_nbytes for c in self.document.channels if c.fixed_data), default=1)
        self.count = max(1, min(count, READ_BYTES // max(1, largest)))
        self.state: ScanState | None = None
        cursor = cursor or Cursor()
        self._channels: dict[str, Channel] = {
            Keys.channel(key, c.index): c for c in self.document.channels
        }
        self._events_key = Keys.events(key)
        # The events stream goes last: XREAD answers in this order, so a CLOSED comes after
        # the data of the same read. Only `done` says that everything has been read.
        self._ids = {s: cursor.ids.get(s, "0-0") for s in [*self._channels, self._events_key]}
        # From the first entry on, the index is checked: a stream whose first entries were
        # trimmed before they were read shows a gap from 0 (never silent zeros).
        self._next: dict[str, int] = {
            c.name: cursor.next_index.get(c.name, 0) for c in self.document.channels
        }
        self._ended: set[str] = set()  # stream keys
        #: The document could not be read again after a STARTED or CLOSED (Redis away).
        self._stale = False
        self._pending: list[ScanEvent] = [
            self._malformed(
                bad.name,
                Keys.channel(key, bad.index),
                f"the scan document's entry for this channel is invalid: {bad.reason}",
            )
            for bad in self.document.invalid_channels
        ]

    @property
    def done(self) -> bool:
        """The scan is CLOSED and every channel has ended: nothing more will come (and the
        document is as read after the CLOSED)."""
        return (
            self.state is ScanState.CLOSED
            and len(self._ended) == len(self._channels)
            and not self._stale
        )

    def cursor(self) -> Cursor:
        return Cursor(dict(self._ids), dict(self._next))

    def read(self, timeout: float | None = 1.0) -> list[ScanEvent]:
        """What arrived since the last read, waiting at most ``timeout`` seconds for
        something (None: do not wait). Empty when nothing came, or when :attr:`done`.

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis went away; read again (with
                this reader, or a new one from :meth:`cursor`) once it is back.
        """
        if self._pending:
            pending, self._pending = self._pending, []
            return pending
        refreshed = self.refresh()
        if refreshed or self.done:
            return refreshed  # a report is returned before reading on: never lost
        streams = self.wanted()
        if self.state is ScanState.CLOSED:
            timeout = None  # every entry is in Redis already: do not wait for more
        try:
            response = xread(self.client, streams, self.count, timeout)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            return self.drop_wrong_types(list(streams))
        events = self.take(response)
        if not response and self.state is ScanState.CLOSED:
            events.extend(self._missing_ends())
        return events

    def wanted(self) -> dict[str, str]:
        """The streams still to read, each with the id of the last entry read."""
        return {s: i for s, i in self._ids.items() if s not in self._ended}

    def take(self, response: Mapping[str, Entries]) -> list[ScanEvent]:
        """The events of entries read for this reader by someone else (a
        :class:`~nexus_writer.protocol.mux.StreamMux`): ``{stream: entries}``, each
        stream's entries following the last read of it, in XREAD's order; first, any
        events not yet returned (the document's invalid channels).

        It makes no call that can fail when Redis goes away: what it was given is never
        lost half-way. (A document that could not be read again when the scan started or
        closed is read by :meth:`refresh`; a gap whose cause could not be asked of Redis
        is reported as never published.)"""
        events, self._pending = self._pending, []
        for stream, entries in response.items():
            if not entries:
                continue
            channel = self._channels.get(stream)
            if channel is None:
                for entry_id, flat in entries:
                    events.extend(self._scan_event(entry_id.decode(), fields_of(flat)))
            else:
                events.extend(self._channel_events(stream, channel, entries))
            self._ids[stream] = entries[-1][0].decode()
        return events

    def drop_wrong_types(self, streams: list[str]) -> list[ScanEvent]:
        """Some stream of the scan is a key of another type (WRONGTYPE): the channel it
        holds ends here, reported; the events stream, the scan is taken as closed. The
        other streams are read on as before."""
        with self.client.pipeline() as pipe:
            for stream in streams:
                pipe.type(stream)
            types = pipe.execute()
        events: list[ScanEvent] = []
        for stream, kind in zip(streams, types, strict=True):
            if text(kind) not in ("stream", "none"):
                events.extend(self.drop(stream, text(kind)))
        return events

    def drop(self, stream: str, kind: str) -> list[ScanEvent]:
        """The scan's ``stream`` is a key of type ``kind``, not a stream: the channel it
        holds ends here, reported; the events stream, the scan is taken as closed."""
        self._ended.add(stream)
        why = f"the key {stream} holds a {kind}, not a stream: nothing more is read"
        channel = self._channels.get(stream)
        if channel is None:
            self.state = ScanState.CLOSED
            return [self._malformed("(events)", self._ids[stream], why)]
        return [
            self._malformed(channel.name, self._ids[stream], why),
            ChannelEndEvent(channel, self._next[channel.name]),
        ]

    def _scan_event(self, stream_id: str, fields: dict[bytes, bytes]) -> list[ScanEvent]:
        text = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        kind = text.get("event")
        try:
            if kind == "state":
                state = ScanState(text["state"])
                self.state = state
                events: list[ScanEvent] = []
                reason: EndReason | None = None
                if text.get("reason"):
                    try:
                        reason = EndReason(text["reason"])
                    except ValueError:
                        events.append(
                            self._malformed(
                                "(events)", stream_id, f"unknown end reason {text['reason']!r}"
                            )
                        )
                if state in (ScanState.STARTED, ScanState.CLOSED):
                    events.extend(self._reload(stream_id))
                state_event = StateEvent(state, text.get("time", ""), reason, text.get("message"))
                return [state_event, *events]
            if kind == "comment":
                return [CommentEvent(text["time"], text["text"])]
        except (KeyError, ValueError) as exc:
            return [self._malformed("(events)", stream_id, f"bad scan event {text}: {exc!r}")]
        return [self._malformed("(events)", stream_id, f"unknown scan event {kind!r}")]

    def _reload(self, stream_id: str) -> list[ScanEvent]:
        """Read the document again (it gained start or end information); one that no
        longer reads is reported, and the one read before kept: never the scan's data.
        With Redis away, :meth:`refresh` reads it later (the scan is not done before)."""
        try:
            self._load()
        except (redis.ConnectionError, redis.TimeoutError):
            self._stale = True
        except ProtocolError as exc:
            return [self._malformed("(document)", stream_id, f"kept as read before: {exc}")]
        return []

    def _load(self) -> None:
        with contextlib.suppress(ScanNotFoundError):  # expired: keep the one read before
            self.document = load_document(self.client, self.key)
        self._stale = False

    def refresh(self) -> list[ScanEvent]:
        """Read the document again if that failed while the scan started or closed
        (Redis was away); what no longer reads is reported.

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis is still away.
        """
        if not self._stale:
            return []
        try:
            self._load()
        except ProtocolError as exc:
            self._stale = False
            where = self._ids[self._events_key]
            return [self._malformed("(document)", where, f"kept as read before: {exc}")]
        return []

    def _channel_events(
        self, stream: str, channel: Channel, entries: list[tuple[bytes, list[bytes]]]
    ) -> list[ScanEvent]:
        """Events of one channel's entries, in order. Consecutive fixed-shape entries
        become one :class:`PointsEvent` (one array, one copy), up to about
        ``JOIN_LIMIT`` bytes; a larger entry becomes an event of its own, uncopied."""
        events: list[ScanEvent] = []
        run: list[bytes] = []  # payloads of consecutive entries not yet made into an event
        run_first = run_count = run_bytes = 0
        last_id = first_id = b""
        name = channel.name
        nbytes = channel.point_nbytes if channel.fixed_data else 0

        def flush() -> None:
            nonlocal run, run_count, run_bytes
            if run:
                data = points_array(channel, run, run_count)
                joined = first_id.decode() if first_id != last_id else ""
                events.append(PointsEvent(channel, run_first, data, last_id.decode(), joined))
                run, run_count, run_bytes = [], 0, 0

        for position, (entry_id, flat) in enumerate(entries):
            hit = fast_fixed(nbytes, flat) if nbytes else None
            expected = self._next[name]
            if hit is not None and hit[0] == expected:
                first, count, payload = hit
                if run and run_bytes + len(payload) > JOIN_LIMIT:
                    flush()
                if not run:
                    run_first, first_id = first, entry_id
                run.append(payload)
                run_count += count
                run_bytes += len(payload)
                last_id = entry_id
                self._next[name] = first + count
                continue
            flush()
            events.extend(
                # After the first entry of a read, the one before it was read just now.
                self._entry_events(stream, channel, entry_id, fields_of(flat), position > 0)
            )
        flush()
        return events

    def _entry_events(
        self,
        stream: str,
        channel: Channel,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        follows_read: bool = False,
    ) -> list[ScanEvent]:
        """Events of any one entry of a channel: the general (slow) path. ``follows_read``:
        the entry before it in the stream was read in the same read (so nothing between
        them can have been trimmed)."""
        stream_id = entry_id.decode()
        try:
            decoded = decode(channel, fields)
        except EntryError as exc:
            return [self._malformed(channel.name, stream_id, str(exc))]
        if decoded.end_total is not None:
            self._ended.add(stream)
            return [ChannelEndEvent(channel, decoded.end_total)]
        events: list[ScanEvent] = []
        expected = self._next[channel.name]
        if decoded.first < expected:
            if decoded.first + decoded.points <= expected:
                reason = f"points from {decoded.first} repeat: {expected} expected"
                return [self._malformed(channel.name, stream_id, reason)]
            # Overlapping: the points already read are dropped, the new ones kept.
            events.append(
                self._malformed(
                    channel.name,
                    stream_id,
                    f"points {decoded.first}..{expected - 1} repeat: only the new ones, from "
                    f"{expected}, are kept",
                )
            )
            decoded = _tail(channel, decoded, expected - decoded.first)
        if decoded.first != expected:
            gap = decoded.first - expected
            trimmed = not follows_read and self._trimmed_after(stream)
            error: ProtocolError = (
                DataLostError(self.key, channel.name, expected, gap, stream_id)
                if trimmed
                else GapError(self.key, channel.name, expected, gap, stream_id)
            )
            events.append(ErrorEvent(error))
        self._next[channel.name] = decoded.first + decoded.points
        if decoded.payload is not None:
            data = points_array(channel, [decoded.payload], decoded.points)
            events.append(PointsEvent(channel, decoded.first, data, stream_id))
        elif decoded.ref is not None:
            events.append(
                FrameRefsEvent(channel, decoded.first, decoded.points, decoded.ref, stream_id)
            )
        else:
            assert decoded.arrays is not None
            events.append(PointsEvent(channel, decoded.first, decoded.arrays, stream_id))
        return events

    def _trimmed_after(self, stream: str) -> bool:
        """Whether entries after the last one read were trimmed from ``stream`` (Redis
        trims from the head: its first entry is then past the last one read)."""
        try:
            first = self.client.xinfo_stream(stream).get("first-entry")
        except redis.RedisError:  # cannot be told (Redis away): reported as a gap
            return False
        if not first:
            return False
        return _id_key(first[0]) > _id_key(self._ids[stream].encode())

    def _missing_ends(self) -> list[ScanEvent]:
        """CLOSED, nothing left to read, yet some channels never ended: end them here."""
        events: list[ScanEvent] = []
        for stream, channel in self._channels.items():
            if stream not in self._ended:
                self._ended.add(stream)
                events.append(
                    self._malformed(
                        channel.name,
                        self._ids[stream],
                        "the scan closed without this channel's end marker",
                    )
                )
                events.append(ChannelEndEvent(channel, self._next[channel.name]))
        return events

    def _malformed(self, channel: str, stream_id: str, reason: str) -> ErrorEvent:
        return ErrorEvent(MalformedEntryError(self.key, channel, stream_id, reason))


# -- session reader -----------------------------------------------------------------------


class Guard(Protocol):
    """A lease that the group's state may only be changed under: the Redis string ``key``
    must hold ``token`` (see :class:`nexus_writer.lease.SessionLease`)."""

    key: str

    @property
    def token(self) -> str:
        """The lease value while held. Raises LeaseLost when it is not."""
        ...

    def confirm(self) -> None:
        """Return once Redis holds ``token`` with time left, waiting while that is in doubt
        (the lease ran out in Redis and is being renewed). Raises LeaseLost when another
        holds the lease, or this process gave it up."""


#: Times a guarded script is tried, the lease confirmed in between (see SessionReader._guarded).
GUARD_ATTEMPTS = 3

# Guarded group commands: the check and the change in one atomic script, so that a
# process whose lease ran out (frozen, cut off) cannot take or acknowledge announcements.
# KEYS: lease, stream. ARGV: token, group, consumer, count, id.
_GUARDED_READ = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
                  'STREAMS', KEYS[2], ARGV[5])
"""
# KEYS: lease, stream. ARGV: token, group, id.
_GUARDED_ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
return redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
"""


@dataclass(frozen=True)
class ScanAnnouncement:
    """A new scan of the session, as announced on the session stream."""

    key: str
    name: str
    number: int
    stream_id: str


class SessionReader:
    """Follows the announcements of new scans in one session.

    Without ``group``, the position lives in this object only. With ``group`` (a Redis
    consumer group on the session's stream), it lives in Redis and survives the process:
    an announcement is delivered once, stays *pending* until :meth:`ack`, and a new reader
    of the same group and consumer first gets the pending ones again (a scan the previous
    process had not finished), then the ones announced since (while no process read).
    """

    def __init__(
        self,
        client: redis.Redis,
        session: str,
        prefix: str = DEFAULT_PREFIX,
        since: str = "$",
        *,
        group: str | None = None,
        consumer: str = "writer",
        guard: Guard | None = None,
    ) -> None:
        """``since``: "$" for scans announced from now on, "0-0" for all still in Redis, or
        a :attr:`position` of an earlier reader. With ``group``, only when the group is
        created (:attr:`created`); an existing group goes on from where it is.

        ``guard`` (with ``group``): announcements are only taken from the group, and
        acknowledged, while the guard's lease is held, checked in Redis in the same step.

        Raises:
            UnsupportedProtocolError: Redis holds another protocol major version here.
            ValueError: a guard without a group.
            LeaseLost: the guard's lease is not held (only when reading, acknowledging).
        """
        if guard is not None and group is None:
            raise ValueError("a guard protects a consumer group: give the group too")
        check_client(client)
        self.client = client
        self.session = session
        self.keys = Keys(prefix)
        self._stream = self.keys.session_scans(session)
        self.keys.check_version(client)
        if since == "$":  # pin "now" to an id: "$" in every XREAD could skip announcements
            last = client.xrevrange(self._stream, count=1)
            since = text(last[0][0]) if last and last[0][0] else "0-0"
        self._group = (group, consumer) if group else None
        #: With a group: whether this reader created it (first time the session is followed).
        self.created = False
        if group:
            try:
                client.xgroup_create(self._stream, group, id=since, mkstream=True)
                self.created = True
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            since = "0-0"  # this consumer's pending announcements first
        self.position = since
        self._pending = group is not None
        self._guard = guard
        if guard is not None:
            self._guarded_read = client.register_script(_GUARDED_READ)
            self._guarded_ack = client.register_script(_GUARDED_ACK)
            self._tail = self.delivered  # where to wait for new announcements from

    @property
    def delivered(self) -> str:
        """The id of the last announcement read (with a group: delivered to it, in Redis)."""
        if self._group is None:
            return self.position
        for info in self.client.xinfo_groups(self._stream):
            if text(info["name"]) == self._group[0]:
                return text(info["last-delivered-id"])
        return "0-0"

    def read(self, timeout: float | None = 1.0) -> list[ScanAnnouncement]:
        """Scans announced since the last read, waiting at most ``timeout`` seconds.

        With a group, after a read that failed (Redis unreachable, or slower than the
        client's socket timeout), the next read starts again with this consumer's pending
        announcements: Redis may have run the read after the client stopped waiting for
        it, delivering announcements to the group whose answer nobody received (an
        announcement read again whose scan is being written is the caller's to skip).

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis cannot be reached.
            LeaseLost: with a guard, its lease is lost.
        """
        try:
            return self._announcements(timeout)
        except (redis.ConnectionError, redis.TimeoutError):
            if self._group is not None:
                self._pending, self.position = True, "0-0"
            raise

    def _announcements(self, timeout: float | None) -> list[ScanAnnouncement]:
        if self._pending:
            entries = self._read(self.position, None)
            if not entries:
                self._pending = False  # every pending one was read: now the new ones
        if not self._pending:
            entries = self._read(">" if self._group else self.position, timeout)
        announcements = []
        for entry_id, raw in entries:
            if self._group is None or self._pending:
                self.position = entry_id.decode()
            flat: list[bytes] | None = raw  # None: pending, but trimmed from the stream since
            if flat is None:
                self.ack(entry_id.decode())
                continue
            fields = fields_of(flat)
            try:
                announcements.append(
                    ScanAnnouncement(
                        key=fields[b"key"].decode(),
                        name=fields[b"name"].decode(),
                        number=int(fields[b"number"]),
                        stream_id=entry_id.decode(),
                    )
                )
            except (KeyError, ValueError):
                _log.error(
                    "session %r: entry %s of %s is not a scan announcement: %r",
                    self.session,
                    entry_id.decode(),
                    self._stream,
                    fields,
                )
                self.ack(entry_id.decode())
        return announcements

    def _read(self, after: str, timeout: float | None) -> Entries:
        try:
            if self._guard is not None:
                return self._read_guarded(after, timeout)
            response = xread(self.client, {self._stream: after}, 100, timeout, self._group)
        except redis.ResponseError as exc:
            if self._group is None or "NOGROUP" not in str(exc):
                raise
            self._group_lost()
            return []
        return response.get(self._stream, [])

    def _read_guarded(self, after: str, timeout: float | None) -> Entries:
        """XREADGROUP under the guard, which cannot block inside a script: wait for the
        stream to grow with a plain XREAD first, then take what is new from the group."""
        entries = self._take(after)
        if entries or after != ">" or not timeout:
            return entries
        grown = xread(self.client, {self._stream: self._tail}, 1, timeout).get(self._stream)
        if not grown:
            return []
        entries = self._take(after)
        if not entries:  # delivered to the group before (by an earlier holder): go past it
            self._tail = grown[-1][0].decode()
        return entries

    def _take(self, after: str) -> Entries:
        assert self._guard is not None and self._group is not None
        response: Any = self._guarded(self._guarded_read, [*self._group, 100, after])
        entries: Entries = response[0][1] if response else []
        if entries and after == ">":
            self._tail = entries[-1][0].decode()
        return entries

    def _group_lost(self) -> None:
        """Redis no longer has the group (restarted without persistence, or flushed):
        whatever the stream holds now came after the loss, so read it all."""
        assert self._group is not None
        _log.warning(
            "session %r: Redis lost consumer group %r of %s (restarted without persistence?): "
            "following again from the start of what it holds",
            self.session,
            self._group[0],
            self._stream,
        )
        try:
            self.client.xgroup_create(self._stream, self._group[0], id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._pending = False
        self._tail = "0-0"

    def ack(self, stream_id: str) -> None:
        """With a group: the announcement ``stream_id`` is done with (its scan is written,
        or failed for good); it is not delivered again. Without one: nothing.

        Raises:
            LeaseLost: the guard's lease is not held: the announcement stays pending.
        """
        if self._group is None:
            return
        if self._guard is None:
            self.client.xack(self._stream, self._group[0], stream_id)
            return
        self._guarded(self._guarded_ack, [self._group[0], stream_id])

    def _guarded(self, script: Any, args: list[Any]) -> Any:
        """Run a guarded script with the lease's token (KEYS: lease, stream).

        Redis refusing the token does not by itself mean the lease is lost: the lease may
        have run out in Redis (the process or Redis was frozen) and been taken again by
        this process, with a new term, since the token was read; or be about to. Then the
        lease confirms it (or says that another service holds it) and the script runs
        again with the token of now.

        Raises:
            LeaseLost: another service holds the lease, or this process gave it up.
        """
        assert self._guard is not None
        for _ in range(GUARD_ATTEMPTS):
            try:
                return script(keys=[self._guard.key, self._stream], args=[self._guard.token, *args])
            except redis.ResponseError as exc:
                if not str(exc).startswith("LEASELOST"):
                    raise
            self._guard.confirm()
        raise LeaseLost(
            f"session {self.session}: Redis refused the writer lease {GUARD_ATTEMPTS} times "
            "in a row although it was confirmed each time"
        )


def _id_key(stream_id: bytes | str) -> tuple[int, int]:
    text_id = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    millis, _, sequence = text_id.partition("-")
    return int(millis), int(sequence or 0)


def _tail(channel: Channel, decoded: Decoded, skip: int) -> Decoded:
    """The entry without its first ``skip`` points."""
    if decoded.payload is not None:
        size = len(decoded.payload) // decoded.points
        return decoded._replace(
            first=decoded.first + skip,
            points=decoded.points - skip,
            payload=decoded.payload[skip * size :],
        )
    if decoded.arrays is not None:
        return decoded._replace(
            first=decoded.first + skip, points=decoded.points - skip, arrays=decoded.arrays[skip:]
        )
    assert decoded.ref is not None
    ref = FrameRef(decoded.ref.file, decoded.ref.dataset, decoded.ref.frame + skip)
    return decoded._replace(first=decoded.first + skip, points=decoded.points - skip, ref=ref)

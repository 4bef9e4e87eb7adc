"""Publishing scans: what a data-acquisition system does, following docs/protocol.md.

.. important::
   A publisher is used by one greenlet or thread at a time (it keeps the next point index of
   each channel); different scans may be published from different threads. Its Redis calls
   are plain redis-py calls, each a short write.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis

from .encoding import FrameRef, encode_end, encode_points, encode_refs
from .keys import DEFAULT_PREFIX, Keys
from .model import (
    NEXT_STATES,
    Channel,
    EndReason,
    Plot,
    Positioner,
    Role,
    ScanDocument,
    ScanState,
)

#: Seconds a closed scan stays in Redis (docs/protocol.md, "Retention").
DEFAULT_EXPIRE = 7 * 24 * 3600
#: Entries kept in a session's announcement stream.
SESSION_STREAM_MAXLEN = 100_000


def now() -> str:
    """The current local time, ISO 8601 with its UTC offset."""
    return datetime.now().astimezone().isoformat()


class SessionPublisher:
    """Announces the scans of one session."""

    def __init__(
        self,
        client: redis.Redis,
        session: str,
        prefix: str = DEFAULT_PREFIX,
        expire: int = DEFAULT_EXPIRE,
        maxlen: int | None = None,
    ) -> None:
        """``expire``: seconds a scan stays after it is closed. ``maxlen``: if set, each
        channel stream keeps about that many entries (older ones are trimmed).

        Raises:
            UnsupportedProtocolError: Redis holds data of another protocol major version
                under this prefix.
        """
        self.client = client
        self.session = session
        self.keys = Keys(prefix)
        self.expire = expire
        self.maxlen = maxlen
        self.keys.session_scans(session)  # validates the name
        self.keys.check_version(client, claim=True)

    def new_scan(
        self,
        *,
        name: str,
        title: str,
        file: str,
        channels: Sequence[Channel | Mapping[str, Any]],
        type: str | None = None,
        number: int | None = None,
        shape: Sequence[int] = (),
        user: Mapping[str, Any] | None = None,
        positioners: Mapping[str, Positioner | float] | None = None,
        plots: Iterable[Plot] = (),
    ) -> ScanPublisher:
        """Create a scan (state CREATED) and announce it on the session stream.

        ``channels`` are :class:`Channel` objects or mappings of their fields (``index`` is
        assigned here). ``number`` defaults to the session's next scan number.
        ``positioners`` is the snapshot at the start.
        """
        if number is None:
            number = int(self.client.incr(self.keys.session_counter(self.session)))
        key = self.keys.scan(self.session, f"{number}-{secrets.token_hex(4)}")
        made = []
        for index, spec in enumerate(channels):
            fields = spec.to_json() if isinstance(spec, Channel) else dict(spec)
            fields["index"] = index
            if isinstance(fields.get("role"), Role):
                fields["role"] = fields["role"].value
            made.append(Channel.from_json(fields))
        names = [c.name for c in made]
        if len(set(names)) != len(names):
            raise ValueError(f"scan {name!r}: channel names repeat: {names}")
        document = ScanDocument(
            key=key,
            session=self.session,
            name=name,
            number=number,
            title=title,
            type=type or name,
            file=file,
            channels=tuple(made),
            shape=tuple(shape),
            user=dict(user or {}),
            positioners_start=_positioners(positioners),
            plots=tuple(plots),
        )
        scan = ScanPublisher(self, document)
        with self.client.pipeline() as pipe:
            pipe.set(key, json.dumps(document.to_json()))
            pipe.xadd(Keys.events(key), {"event": "state", "state": "CREATED", "time": now()})
            pipe.xadd(
                self.keys.session_scans(self.session),
                {"key": key, "name": name, "number": number},
                maxlen=SESSION_STREAM_MAXLEN,
                approximate=True,
            )
            pipe.execute()
        return scan


class ScanPublisher:
    """Publishes the life cycle and the data of one scan."""

    def __init__(self, session: SessionPublisher, document: ScanDocument) -> None:
        self._session = session
        self._client = session.client
        self.document = document
        self.state = ScanState.CREATED
        self._next: dict[str, int] = {c.name: 0 for c in document.channels}
        self._ended: set[str] = set()

    @property
    def key(self) -> str:
        return self.document.key

    # -- life cycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        self._move(ScanState.PREPARED)

    def start(self) -> None:
        """STARTED; records the start time in the document."""
        self.document = replace(self.document, start_time=now())
        self._move(ScanState.STARTED, document=True)

    def stop(self) -> None:
        """STOPPED: no more points will come."""
        self._move(ScanState.STOPPED)

    def close(
        self,
        reason: EndReason = EndReason.SUCCESS,
        message: str | None = None,
        positioners: Mapping[str, Positioner | float] | None = None,
    ) -> None:
        """End every channel, record the end in the document, CLOSED, and set the expiry.

        ``positioners`` is the snapshot at the end.
        """
        for channel in self.document.channels:
            if channel.name not in self._ended:
                self.end_channel(channel.name)
        self.document = replace(
            self.document,
            end_time=now(),
            end_reason=reason,
            end_message=message,
            positioners_end=_positioners(positioners),
        )
        extra = {"reason": reason.value}
        if message:
            extra["message"] = message
        self._move(ScanState.CLOSED, document=True, **extra)
        keys = [self.key, Keys.events(self.key)]
        keys += [Keys.channel(self.key, c.index) for c in self.document.channels]
        with self._client.pipeline() as pipe:
            for key in keys:
                pipe.expire(key, self._session.expire)
            pipe.execute()

    def comment(self, text: str) -> None:
        """Add a user comment (kept in the document, announced on the events stream)."""
        stamp = now()
        self.document = replace(self.document, comments=(*self.document.comments, (stamp, text)))
        with self._client.pipeline() as pipe:
            pipe.set(self.key, json.dumps(self.document.to_json()))
            pipe.xadd(Keys.events(self.key), {"event": "comment", "time": stamp, "text": text})
            pipe.execute()

    def _move(self, state: ScanState, document: bool = False, **extra: str) -> None:
        if state not in NEXT_STATES[self.state]:
            raise ValueError(
                f"scan {self.key!r}: cannot go from {self.state.value} to {state.value}"
            )
        with self._client.pipeline() as pipe:
            if document:
                pipe.set(self.key, json.dumps(self.document.to_json()))
            fields = {"event": "state", "state": state.value, "time": now(), **extra}
            pipe.xadd(Keys.events(self.key), fields)  # type: ignore[arg-type]
            pipe.execute()
        self.state = state

    # -- data ---------------------------------------------------------------------------------

    def send(self, channel: str, points: Any) -> None:
        """Publish the next points of ``channel`` in one entry.

        ``points``: an array of shape ``(n, *shape)`` (a flat sequence for a scalar channel),
        or for a variable shape a sequence of per-point arrays.
        """
        info = self._channel(channel)
        fields = encode_points(info, self._next[channel], points)
        self._add(info, fields)
        self._next[channel] += int(fields["n"])

    def send_refs(self, channel: str, count: int, file: str, dataset: str, frame: int) -> None:
        """Publish that the next ``count`` points of ``channel`` are frames ``frame`` ... of
        ``dataset`` in the detector file ``file`` (already written there)."""
        info = self._channel(channel)
        self._add(
            info, encode_refs(info, self._next[channel], count, FrameRef(file, dataset, frame))
        )
        self._next[channel] += count

    def end_channel(self, channel: str) -> None:
        """Publish the end marker of ``channel``: no more points will come."""
        info = self._channel(channel)
        self._add(info, encode_end(self._next[channel]))
        self._ended.add(channel)

    def _channel(self, name: str) -> Channel:
        if name in self._ended:
            raise ValueError(f"scan {self.key!r}: channel {name!r} has ended")
        return self.document.channel(name)

    def _add(self, channel: Channel, fields: Mapping[str, Any]) -> None:
        maxlen = self._session.maxlen
        self._client.xadd(
            Keys.channel(self.key, channel.index),
            dict(fields),  # type: ignore[arg-type]  # redis-py's key type is invariant
            maxlen=maxlen,
            approximate=maxlen is not None,
        )


def _positioners(values: Mapping[str, Positioner | float] | None) -> dict[str, Positioner]:
    return {
        name: value if isinstance(value, Positioner) else Positioner(float(value))
        for name, value in (values or {}).items()
    }

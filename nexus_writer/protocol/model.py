"""What a scan is made of: states, end reasons, channel roles and the scan document.

.. important::
   Plain frozen data: shared freely between threads and hubs.

The JSON form of each class is the one specified in docs/protocol.md; ``to_json`` and
``from_json`` are the only places that know it.
"""

from __future__ import annotations

import enum
import functools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ProtocolError, UnsupportedProtocolError

#: Major.minor. A reader accepts every minor version of its major version.
PROTOCOL_VERSION = "1.0"
PROTOCOL_MAJOR = 1


class ScanState(enum.Enum):
    CREATED = "CREATED"
    PREPARED = "PREPARED"
    STARTED = "STARTED"
    STOPPED = "STOPPED"
    CLOSED = "CLOSED"


#: The only forward moves; a scan may also go from any state but CLOSED to CLOSED directly
#: (a failure before the scan started).
NEXT_STATES: dict[ScanState, tuple[ScanState, ...]] = {
    ScanState.CREATED: (ScanState.PREPARED, ScanState.CLOSED),
    ScanState.PREPARED: (ScanState.STARTED, ScanState.CLOSED),
    ScanState.STARTED: (ScanState.STOPPED, ScanState.CLOSED),
    ScanState.STOPPED: (ScanState.CLOSED,),
    ScanState.CLOSED: (),
}


class EndReason(enum.Enum):
    SUCCESS = "SUCCESS"
    USER_ABORT = "USER_ABORT"
    FAILURE = "FAILURE"


class Role(enum.Enum):
    """What a channel measures; decides where the writer puts it."""

    POSITIONER = "positioner"  #: a motor position per point (scalar)
    COUNTER = "counter"  #: a 0D value per point
    SPECTRUM = "spectrum"  #: a 1D array per point (MCA)
    IMAGE = "image"  #: a 2D array per point, inline in Redis
    FRAME_REF = "frame_ref"  #: a 2D frame per point, in a detector's own HDF5 file


_NUMERIC_KINDS = "biuf"


def normalize_dtype(dtype: Any) -> str:
    """The protocol's spelling of a numeric dtype: numpy's string, little-endian.

    Raises:
        ProtocolError: not a boolean, integer or floating-point dtype.
    """
    numpy_type = isinstance(dtype, type) and issubclass(dtype, np.generic)
    if not (isinstance(dtype, str | np.dtype) or numpy_type) or dtype == "":
        raise ProtocolError(f"dtype {dtype!r} is not a numpy dtype string such as '<f8'")
    try:
        parsed = np.dtype(dtype)
    except TypeError as exc:
        raise ProtocolError(f"unknown dtype {dtype!r}") from exc
    if parsed.kind not in _NUMERIC_KINDS or parsed.shape:
        raise ProtocolError(f"dtype {dtype!r} is not a boolean, integer or float type")
    if parsed.byteorder == ">":
        raise ProtocolError(f"dtype {dtype!r} is big-endian: payloads are little-endian ('<')")
    return str(parsed.newbyteorder("<").str)


@dataclass(frozen=True)
class Channel:
    """One data channel of a scan; ``index`` names its stream."""

    name: str
    index: int
    dtype: str
    shape: tuple[int, ...] = ()  #: of one point; -1 marks a dimension that varies per point
    role: Role = Role.COUNTER
    unit: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if any(n < -1 or n == 0 for n in self.shape):
            raise ProtocolError(f"channel {self.name!r}: bad shape {self.shape}")
        if self.role is Role.FRAME_REF and len(self.shape) != 2:
            raise ProtocolError(f"channel {self.name!r}: a frame reference needs a 2D shape")

    @functools.cached_property
    def variable(self) -> bool:
        """True when some dimension of a point varies from point to point."""
        return -1 in self.shape

    @functools.cached_property
    def fixed_data(self) -> bool:
        """True when its entries carry points of one fixed shape in a payload."""
        return not self.variable and self.role is not Role.FRAME_REF

    @functools.cached_property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    @functools.cached_property
    def point_nbytes(self) -> int:
        """Bytes of one point (only for fixed shapes)."""
        return math.prod(self.shape) * self.numpy_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "role": self.role.value,
            "unit": self.unit,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Channel:
        index, shape = data["index"], data.get("shape", [])
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2**31:
            raise ProtocolError(f"index {index!r:.40} is not an integer from 0")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and -1 <= n < 2**31 for n in shape
        ):
            raise ProtocolError(f"shape {shape!r:.60} is not a list of integers")
        return cls(
            name=str(data["name"]),
            index=index,
            dtype=data["dtype"],
            shape=tuple(shape),
            role=Role(data.get("role", Role.COUNTER.value)),
            unit=data.get("unit"),
        )


@dataclass(frozen=True)
class Plot:
    """A default view of the scan: ``signals`` against ``axes`` (one axis per dimension)."""

    name: str
    signals: tuple[str, ...]
    axes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "signals": list(self.signals), "axes": list(self.axes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plot:
        return cls(str(data["name"]), tuple(data["signals"]), tuple(data.get("axes", ())))


@dataclass(frozen=True)
class Positioner:
    """A motor position in a snapshot taken at the start or the end of a scan."""

    value: Any  #: a number as published (anything else is written as its JSON text)
    unit: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Positioner:
        """``{"value": ..., "unit": ...}`` (other fields ignored), or a bare number."""
        if not isinstance(data, dict):
            return cls(data)
        unit = data.get("unit")
        return cls(data.get("value"), None if unit is None else str(unit))


@dataclass(frozen=True)
class InvalidChannel:
    """A channel of the document that cannot be read; the others still can."""

    name: str
    index: int
    reason: str


@dataclass(frozen=True)
class ScanDocument:
    """Everything about a scan except its data points and its life-cycle events."""

    key: str
    session: str
    name: str
    number: int
    title: str
    type: str
    file: str  #: the NeXus file this scan should be written to
    channels: tuple[Channel, ...]
    shape: tuple[int, ...] = ()  #: points per dimension (mesh: (fast, slow)); () if open-ended
    start_time: str | None = None
    end_time: str | None = None
    end_reason: EndReason | None = None
    end_message: str | None = None
    user: dict[str, Any] = field(default_factory=dict)
    comments: tuple[tuple[str, str], ...] = ()  #: (ISO time, text)
    positioners_start: dict[str, Positioner] = field(default_factory=dict)
    positioners_end: dict[str, Positioner] = field(default_factory=dict)
    plots: tuple[Plot, ...] = ()
    protocol: str = PROTOCOL_VERSION
    #: Channels of the stored document that could not be parsed (never stored back).
    invalid_channels: tuple[InvalidChannel, ...] = ()
    #: What was wrong in the stored document's other fields, and what was done instead
    #: (never stored back).
    problems: tuple[str, ...] = ()

    def channel(self, name: str) -> Channel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(f"scan {self.key!r} has no channel {name!r}")

    @property
    def npoints(self) -> int | None:
        """Points expected in all, if the scan's shape is known."""
        return math.prod(self.shape) if self.shape else None

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "key": self.key,
            "session": self.session,
            "name": self.name,
            "number": self.number,
            "title": self.title,
            "type": self.type,
            "file": self.file,
            "shape": list(self.shape),
            "start_time": self.start_time,
            "end_time": self.end_time,
            "end_reason": self.end_reason.value if self.end_reason else None,
            "end_message": self.end_message,
            "user": self.user,
            "comments": [{"time": t, "text": text} for t, text in self.comments],
            "positioners": {
                "start": {k: asdict(v) for k, v in self.positioners_start.items()},
                "end": {k: asdict(v) for k, v in self.positioners_end.items()},
            },
            "plots": [p.to_json() for p in self.plots],
            "channels": [c.to_json() for c in self.channels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanDocument:
        """Raises:
        UnsupportedProtocolError: the document's protocol major version is not ours.
        ProtocolError: a required field is missing or has the wrong type.
        """
        version = str(data.get("protocol", ""))
        if version.split(".", maxsplit=1)[0] != str(PROTOCOL_MAJOR):
            raise UnsupportedProtocolError(
                f"scan {data.get('key')!r} uses protocol {version or '(none)'}; "
                f"this reader knows {PROTOCOL_MAJOR}.x"
            )
        if not isinstance(data, dict):
            raise ProtocolError(f"a scan document must be a JSON object, not {data!r:.80}")
        channels, invalid = _parse_channels(data.get("channels"))
        problems: list[str] = []
        positioners = data.get("positioners", {})
        if not isinstance(positioners, dict):
            problems.append(f"positioners {positioners!r:.80} is not an object: ignored")
            positioners = {}
        user = data.get("user", {})
        if not isinstance(user, dict):
            problems.append(f"user metadata {user!r:.80} is not an object: kept as 'value'")
            user = {"value": user}
        number = data.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**53:
            raise ProtocolError(
                f"scan document {data.get('key')!r}: field 'number' must be an integer from 0, "
                f"not {number!r:.40}"
            )
        try:
            return cls(
                protocol=version,
                key=str(data["key"]),
                session=str(data["session"]),
                name=str(data["name"]),
                number=number,
                title=str(data["title"]),
                type=str(data["type"]),
                file=str(data["file"]),
                shape=_parse_shape(data.get("shape", ()), problems),
                start_time=_optional_text(data, "start_time", problems),
                end_time=_optional_text(data, "end_time", problems),
                end_reason=_end_reason(data.get("end_reason"), problems),
                end_message=_optional_text(data, "end_message", problems),
                user=user,
                comments=_parse_comments(data.get("comments", ()), problems),
                positioners_start=_parse_snapshot(positioners, "start", problems),
                positioners_end=_parse_snapshot(positioners, "end", problems),
                plots=_parse_plots(data.get("plots", ()), problems),
                channels=channels,
                invalid_channels=invalid,
                problems=tuple(problems),
            )
        except KeyError as exc:
            raise ProtocolError(
                f"scan document {data.get('key')!r} has no field {exc.args[0]!r}"
            ) from exc


def _optional_text(data: dict[str, Any], name: str, problems: list[str]) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    problems.append(f"field {name!r} {value!r:.80} is not text: written as its JSON text")
    return json.dumps(value, default=repr)


def _end_reason(raw: Any, problems: list[str]) -> EndReason | None:
    if raw is None:
        return None
    try:
        return EndReason(raw)
    except ValueError:
        problems.append(f"end_reason {raw!r:.40} is none of SUCCESS, USER_ABORT, FAILURE: ignored")
        return None


def _parse_comments(raw: Any, problems: list[str]) -> tuple[tuple[str, str], ...]:
    comments = []
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            comments.append((str(item.get("time", "")), item["text"]))
        else:
            problems.append(f"comment {item!r:.80} is not {{time, text}}: ignored")
    return tuple(comments)


def _parse_plots(raw: Any, problems: list[str]) -> tuple[Plot, ...]:
    plots = []
    for item in raw if isinstance(raw, list) else [raw]:
        try:
            if not isinstance(item, dict):
                raise TypeError("not an object")
            signals, axes = item["signals"], item.get("axes", [])
            if not (isinstance(signals, list) and isinstance(axes, list)) or not all(
                isinstance(n, str) for n in [*signals, *axes]
            ):
                raise TypeError("signals and axes must be lists of channel names")
            plots.append(Plot(str(item["name"]), tuple(signals), tuple(axes)))
        except (KeyError, TypeError) as exc:
            problems.append(f"plot {item!r:.80} is ignored: {exc}")
    return tuple(plots)


def _parse_shape(raw: Any, problems: list[str]) -> tuple[int, ...]:
    """The scan's shape; one that is not a list of positive integers is ignored (the scan
    is then open-ended), with a problem recorded: it never costs the scan's data."""
    if (
        isinstance(raw, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in raw)
        and math.prod(raw) < 2**53
    ):
        return tuple(raw)
    problems.append(f"scan shape {raw!r:.80} is not a list of positive integers: ignored")
    return ()


def _parse_snapshot(
    positioners: dict[str, Any], which: str, problems: list[str]
) -> dict[str, Positioner]:
    snapshot = positioners.get(which, {})
    if not isinstance(snapshot, dict):
        problems.append(f"positioners {which!r} {snapshot!r:.80} is not an object: ignored")
        return {}
    return {str(k): Positioner.from_json(v) for k, v in snapshot.items()}


def _parse_channels(raw: Any) -> tuple[tuple[Channel, ...], tuple[InvalidChannel, ...]]:
    """The channels that can be read, and the others with the reason; a name or an index
    used twice makes the later channel invalid (both would write one place)."""
    if not isinstance(raw, list):
        raise ProtocolError(f"the channel list must be a JSON array, not {raw!r:.80}")
    channels: list[Channel] = []
    invalid: list[InvalidChannel] = []
    names: dict[str, int] = {}
    indices: dict[int, str] = {}
    for position, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise ProtocolError(f"not a JSON object: {item!r:.80}")
            channel = Channel.from_json(item)
            if channel.index < 0:
                raise ProtocolError(f"index {channel.index} is negative")
            if channel.name in names:
                raise ProtocolError(f"the name is used by channel #{names[channel.name]} too")
            if channel.index in indices:
                raise ProtocolError(
                    f"index {channel.index} is used by channel {indices[channel.index]!r} too"
                )
            names[channel.name] = position
            indices[channel.index] = channel.name
            channels.append(channel)
        except (ProtocolError, KeyError, TypeError, ValueError, OverflowError) as exc:
            name = (
                str(item.get("name", f"#{position}")) if isinstance(item, dict) else f"#{position}"
            )
            index = item.get("index", position) if isinstance(item, dict) else position
            if not isinstance(index, int) or isinstance(index, bool):
                index = position
            reason = str(exc) if isinstance(exc, ProtocolError) else f"bad field: {exc!r}"
            invalid.append(InvalidChannel(name, index, reason))
    return tuple(channels), tuple(invalid)

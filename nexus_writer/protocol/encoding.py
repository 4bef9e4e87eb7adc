"""Encoding of stream entries: the one place that turns points into Redis fields and back.

.. important::
   Pure functions: usable from any thread.

Field names are single letters to keep entries small (docs/protocol.md, "Channel streams"):
``i`` first point index, ``n`` number of points, ``d`` payload, ``s`` per-point shapes (only
for variable shapes), ``r`` frame reference, ``end`` total points (the end marker).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .model import Channel, Role


class EntryError(ValueError):
    """An entry's fields do not decode; the reader adds scan, channel and stream id."""


@dataclass(frozen=True)
class FrameRef:
    """``count`` frames of a detector file, from frame ``frame`` of dataset ``dataset``."""

    file: str
    dataset: str
    frame: int


class Decoded(NamedTuple):
    """One decoded channel entry: exactly one of payload, arrays, ref and end_total is set.

    A fixed-shape entry keeps its checked raw ``payload``, so that consecutive entries can
    become one array with one copy (:func:`points_array`). (A NamedTuple: made once per
    entry, it must be cheap.)
    """

    first: int = 0
    points: int = 0  # not "count": a NamedTuple has a count() method
    payload: bytes | None = None
    arrays: list[np.ndarray[Any, Any]] | None = None
    ref: FrameRef | None = None
    end_total: int | None = None


def encode_points(channel: Channel, first: int, points: Any) -> dict[str, bytes | str | int]:
    """Fields of one entry holding consecutive points of ``channel`` from index ``first``.

    ``points`` is an array of shape ``(n, *shape)`` (a scalar channel also takes a flat
    sequence), or, for a variable shape, a sequence of per-point arrays.

    Raises:
        ValueError: the points do not fit the channel's shape.
    """
    if channel.role is Role.FRAME_REF:
        raise ValueError(f"channel {channel.name!r} holds frame references: use encode_refs")
    if channel.variable:
        arrays = [np.ascontiguousarray(p, dtype=channel.dtype) for p in points]
        for array in arrays:
            _check_shape(channel, array.shape)
        return {
            "i": first,
            "n": len(arrays),
            "s": json.dumps([list(a.shape) for a in arrays]),
            "d": b"".join(a.tobytes() for a in arrays),
        }
    array = np.ascontiguousarray(points, dtype=channel.dtype)
    if array.shape[1:] != channel.shape or array.ndim != len(channel.shape) + 1:
        raise ValueError(
            f"channel {channel.name!r}: points of shape {array.shape[1:]} given, "
            f"{channel.shape} expected (as an array of shape (n, *shape))"
        )
    return {"i": first, "n": len(array), "d": array.tobytes()}


def encode_refs(
    channel: Channel, first: int, count: int, ref: FrameRef
) -> dict[str, bytes | str | int]:
    """Fields of one entry saying that points first..first+count-1 are frames in a file."""
    if channel.role is not Role.FRAME_REF:
        raise ValueError(f"channel {channel.name!r} does not hold frame references")
    if count < 1 or ref.frame < 0:
        raise ValueError(f"channel {channel.name!r}: bad reference count={count} {ref}")
    payload = json.dumps({"file": ref.file, "dataset": ref.dataset, "frame": ref.frame})
    return {"i": first, "n": count, "r": payload}


def encode_end(total: int) -> dict[str, int]:
    """Fields of the end marker: the channel has ``total`` points in all."""
    return {"end": total}


def fast_fixed(point_nbytes: int, flat: list[bytes]) -> tuple[int, int, bytes] | None:
    """(first, count, payload) of the usual entry ``i <first> n <count> d <payload>`` of a
    fixed-shape channel of ``point_nbytes`` bytes per point, checked; None for anything
    else, which :func:`decode` then decodes or explains.

    The hot path of reading: no dict, no object per entry.
    """
    if len(flat) != 6 or flat[0] != b"i" or flat[2] != b"n" or flat[4] != b"d":
        return None
    try:
        first, count = int(flat[1]), int(flat[3])
    except ValueError:
        return None
    payload = flat[5]
    if first < 0 or count < 1 or len(payload) != count * point_nbytes:
        return None
    return first, count, payload


def decode(channel: Channel, fields: dict[bytes, bytes]) -> Decoded:
    """Decode one entry of ``channel``.

    Raises:
        EntryError: with the reason, for any malformed entry.
    """
    if b"end" in fields:
        return Decoded(end_total=_int(fields, b"end"))
    first, count = _int(fields, b"i"), _int(fields, b"n")
    if first < 0 or count < 1:
        raise EntryError(f"bad point range i={first} n={count}")
    if b"r" in fields:
        if channel.role is not Role.FRAME_REF:
            raise EntryError("a frame reference in a channel that holds data")
        try:
            ref = json.loads(fields[b"r"])
            return Decoded(
                first, count, ref=FrameRef(str(ref["file"]), str(ref["dataset"]), int(ref["frame"]))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EntryError(f"corrupt frame reference {fields[b'r'][:80]!r}: {exc}") from exc
    if b"d" not in fields:
        raise EntryError(f"no payload: fields {sorted(k.decode(errors='replace') for k in fields)}")
    if channel.role is Role.FRAME_REF:
        raise EntryError("a data payload in a channel of frame references")
    payload = fields[b"d"]
    if channel.variable:
        return Decoded(first, count, arrays=_decode_variable(channel, count, fields, payload))
    expected = count * channel.point_nbytes
    if len(payload) != expected:
        raise EntryError(
            f"payload has {len(payload)} bytes; {count} points of shape {channel.shape} "
            f"and dtype {channel.dtype} take {expected}"
        )
    return Decoded(first, count, payload=payload)


def points_array(channel: Channel, payloads: list[bytes], count: int) -> np.ndarray[Any, Any]:
    """The ``count`` points held by checked fixed-shape payloads, as one read-only array
    of shape ``(count, *shape)``; a single payload is not copied."""
    payload = payloads[0] if len(payloads) == 1 else b"".join(payloads)
    return np.frombuffer(payload, dtype=channel.numpy_dtype).reshape((count, *channel.shape))


def _decode_variable(
    channel: Channel, count: int, fields: dict[bytes, bytes], payload: bytes
) -> list[np.ndarray[Any, Any]]:
    try:
        shapes = [tuple(int(n) for n in s) for s in json.loads(fields[b"s"])]
    except (KeyError, ValueError, TypeError) as exc:
        raise EntryError(f"variable-shape entry without valid shapes 's': {exc}") from exc
    if len(shapes) != count:
        raise EntryError(f"{len(shapes)} shapes for {count} points")
    itemsize = channel.numpy_dtype.itemsize
    arrays, offset = [], 0
    for shape in shapes:
        try:
            _check_shape(channel, shape)
        except ValueError as exc:
            raise EntryError(str(exc)) from exc
        size = int(np.prod(shape)) * itemsize
        if offset + size > len(payload):
            raise EntryError(f"payload of {len(payload)} bytes is shorter than its shapes say")
        arrays.append(
            np.frombuffer(
                payload, dtype=channel.dtype, count=size // itemsize, offset=offset
            ).reshape(shape)
        )
        offset += size
    if offset != len(payload):
        raise EntryError(f"payload of {len(payload)} bytes is longer than its shapes say")
    return arrays


def _check_shape(channel: Channel, shape: Sequence[int]) -> None:
    if len(shape) != len(channel.shape) or any(
        want not in (-1, got) for want, got in zip(channel.shape, shape, strict=True)
    ):
        raise ValueError(
            f"channel {channel.name!r}: point of shape {tuple(shape)} given, "
            f"{channel.shape} expected (-1: any length)"
        )


_DECIMAL = re.compile(rb"-?[0-9]{1,19}")


def _int(fields: dict[bytes, bytes], name: bytes) -> int:
    """A decimal integer field (no spaces, no underscores: ``int()`` accepts both)."""
    try:
        value = fields[name]
        if not _DECIMAL.fullmatch(value):
            raise ValueError(value)
        return int(value)
    except KeyError:
        raise EntryError(f"field {name.decode()!r} is missing") from None
    except ValueError:
        raise EntryError(
            f"field {name.decode()!r} is not an integer: {fields[name][:40]!r}"
        ) from None

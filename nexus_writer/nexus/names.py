"""Names in the NeXus file: entries, and HDF5 names for the protocol's channel names.

.. important::
   Pure functions: usable from any thread.

nxcheck accepts names matching ``^[a-zA-Z_][a-zA-Z0-9_]*$`` only, so the ``N.1`` entries of
Bliss files become ``scan_000N`` and ``axis:robx`` becomes ``robx``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def entry_name(number: int, occurrence: int = 1) -> str:
    """The NXentry of scan ``number``: ``scan_0007``; the ``occurrence``-th scan of that
    number in one file (another run of the session, another Redis) gets ``scan_0007_2``,
    ``scan_0007_3``...: it never overwrites the first."""
    base = f"scan_{number:04d}"
    return base if occurrence == 1 else f"{base}_{occurrence}"


_ENTRY = re.compile(r"scan_(\d+)(?:_(\d+))?")


def entry_order(name: str | None) -> tuple[int, int] | None:
    """Where an entry made by :func:`entry_name` comes in time: (occurrence, number), so
    that a later run's ``scan_0001_2`` comes after ``scan_0006`` (else None)."""
    match = _ENTRY.fullmatch(name) if name else None
    if match is None:
        return None
    return int(match.group(2) or 1), int(match.group(1))


def valid_name(text: str) -> str:
    """``text`` made into a valid NeXus name (invalid characters become ``_``)."""
    name = _INVALID.sub("_", text) or "_"
    return f"_{name}" if name[0].isdigit() else name


#: Channel name endings that say what a detector gives, not which detector it is.
GENERIC = frozenset({"data", "image", "spectrum", "counts", "value", "frame"})


def _short(channel: str) -> str:
    head, _, tail = channel.rpartition(":")
    if head and tail in GENERIC:
        return valid_name(head.rsplit(":", 1)[-1])  # mca1:spectrum -> mca1
    return valid_name(tail)  # axis:robx -> robx


def short_names(channels: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """A unique valid name for each channel: the part after the last ``:`` where that is
    unique (``simu:diode1`` -> ``diode1``; the detector for generic endings:
    ``mca1:spectrum`` -> ``mca1``), else the whole name (``simu_diode1``); never one of
    ``reserved`` (names the layout uses itself)."""
    channels = list(channels)
    tails = [_short(c) for c in channels]
    counts = Counter(tails)
    names: dict[str, str] = {}
    taken: set[str] = set(reserved)
    for channel, tail in zip(channels, tails, strict=True):
        name = tail if counts[tail] == 1 else valid_name(channel)
        while name in taken:
            name += "_"
        taken.add(name)
        names[channel] = name
    return names

"""Scan commands of the simulator, parsed into plans: which motors move where, per point.

.. important::
   Plain functions and frozen data: usable from any thread.

The syntax follows Bliss's (positions in mm, times in s)::

    ascan    MOTOR START STOP INTERVALS COUNT_TIME
    dscan    MOTOR REL_START REL_STOP INTERVALS COUNT_TIME     (relative; motor returns)
    amesh    FAST START STOP INTERVALS SLOW START STOP INTERVALS COUNT_TIME
    loopscan NPOINTS COUNT_TIME
    timescan COUNT_TIME NPOINTS                                (open-ended shape)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import numpy as np

SCAN_TYPES = ("ascan", "dscan", "amesh", "loopscan", "timescan")


class ScanSyntaxError(ValueError):
    """A scan command that cannot be parsed; the message shows the expected syntax."""


@dataclass(frozen=True)
class ScanPlan:
    type: str
    title: str
    count_time: float
    npoints: int
    shape: tuple[int, ...]  #: as in the scan document (() for an open-ended timescan)
    motors: dict[str, np.ndarray[Any, Any]]  #: absolute position of each moving motor, per point


_USAGE = {
    "ascan": "ascan MOTOR START STOP INTERVALS COUNT_TIME",
    "dscan": "dscan MOTOR REL_START REL_STOP INTERVALS COUNT_TIME",
    "amesh": "amesh FAST START STOP INTERVALS SLOW START STOP INTERVALS COUNT_TIME",
    "loopscan": "loopscan NPOINTS COUNT_TIME",
    "timescan": "timescan COUNT_TIME NPOINTS",
}


def parse_scan(command: str, positions: dict[str, float]) -> ScanPlan:
    """The plan of ``command``; ``positions`` are the motors' current positions (for dscan).

    Raises:
        ScanSyntaxError: unknown scan type, unknown motor, or wrong arguments.
    """
    words = shlex.split(command)
    if not words or words[0] not in SCAN_TYPES:
        raise ScanSyntaxError(f"{command!r}: the scan type must be one of {', '.join(SCAN_TYPES)}")
    kind, args = words[0], words[1:]
    try:
        return _PARSERS[kind](command, args, positions)
    except (ValueError, IndexError, KeyError) as exc:
        if isinstance(exc, ScanSyntaxError):
            raise
        raise ScanSyntaxError(f"{command!r}: expected '{_USAGE[kind]}' ({exc})") from exc


def _motor(name: str, positions: dict[str, float]) -> str:
    if name not in positions:
        raise ScanSyntaxError(f"unknown motor {name!r}; motors: {', '.join(sorted(positions))}")
    return name


def _count_time(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"negative count time {value}")
    return value


def _intervals(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"at least 1 interval, not {value}")
    return value


def _ascan(command: str, args: list[str], positions: dict[str, float]) -> ScanPlan:
    if len(args) != 5:
        raise ValueError(f"{len(args)} arguments")
    motor = _motor(args[0], positions)
    n = _intervals(args[3])
    path = np.linspace(float(args[1]), float(args[2]), n + 1)
    return ScanPlan("ascan", command, _count_time(args[4]), n + 1, (n + 1,), {motor: path})


def _dscan(command: str, args: list[str], positions: dict[str, float]) -> ScanPlan:
    plan = _ascan(command, args, positions)
    motor = args[0]
    path = plan.motors[motor] + positions[motor]
    return ScanPlan("dscan", command, plan.count_time, plan.npoints, plan.shape, {motor: path})


def _amesh(command: str, args: list[str], positions: dict[str, float]) -> ScanPlan:
    if len(args) != 9:
        raise ValueError(f"{len(args)} arguments")
    fast, slow = _motor(args[0], positions), _motor(args[4], positions)
    if fast == slow:
        raise ScanSyntaxError(f"{command!r}: the two motors of a mesh must differ")
    nf, ns = _intervals(args[3]) + 1, _intervals(args[7]) + 1
    fast_path = np.linspace(float(args[1]), float(args[2]), nf)
    slow_path = np.linspace(float(args[5]), float(args[6]), ns)
    return ScanPlan(
        "amesh",
        command,
        _count_time(args[8]),
        nf * ns,
        (nf, ns),
        {fast: np.tile(fast_path, ns), slow: np.repeat(slow_path, nf)},
    )


def _loopscan(command: str, args: list[str], positions: dict[str, float]) -> ScanPlan:
    if len(args) != 2:
        raise ValueError(f"{len(args)} arguments")
    n = _intervals(args[0])
    return ScanPlan("loopscan", command, _count_time(args[1]), n, (n,), {})


def _timescan(command: str, args: list[str], positions: dict[str, float]) -> ScanPlan:
    if len(args) != 2:
        raise ValueError(f"{len(args)} arguments")
    n = _intervals(args[1])
    return ScanPlan("timescan", command, _count_time(args[0]), n, (), {})


_PARSERS = {
    "ascan": _ascan,
    "dscan": _dscan,
    "amesh": _amesh,
    "loopscan": _loopscan,
    "timescan": _timescan,
}

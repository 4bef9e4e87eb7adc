"""Readings: values read outside the scan (Tango attributes such as the ring current),
stored in each scan's entry as they were when the entry was made.

.. important::
   Plain data, and a function called by the scan's consumer (the thread that owns the
   file) while it makes the entry.

Layout (docs/reading-files.md): ``<entry>/instrument/<group>`` (NXcollection), one dataset
per reading, named after its source (a valid NeXus name, unique), holding the value (a
number, an array, or text; empty text when nothing was read yet), with the attributes
``source`` (where it was read, e.g. a Tango attribute's name), ``quality`` (``VALID``,
``INVALID``, ``ALARM``, ``CHANGING``, ``WARNING``, or ``NO_VALUE``), ``time`` (when it was
read, ISO 8601 UTC; absent without a value) and ``error`` (why there is no value, if so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from .names import short_names

#: Quality of a reading that has no value (nothing read yet, or only errors).
NO_VALUE = "NO_VALUE"


@dataclass(frozen=True)
class Reading:
    """One value read from outside the scan."""

    value: Any  #: a number, a numpy array, text; None when nothing was read
    quality: str
    time: float | None  #: when it was read, epoch seconds
    error: str | None = None  #: why there is no (good) value


def write_readings(group: h5py.Group, readings: Mapping[str, Reading]) -> list[str]:
    """Store ``readings`` (source -> reading) in ``group``; the notes of what could not be
    stored as it was (stored as text instead)."""
    notes: list[str] = []
    names = short_names(readings)
    for source, reading in readings.items():
        name = names[source]
        dataset = _dataset(group, name, reading.value, notes)
        dataset.attrs["source"] = source
        dataset.attrs["quality"] = reading.quality
        if reading.time is not None:
            stamp = datetime.fromtimestamp(reading.time, timezone.utc)
            dataset.attrs["time"] = stamp.isoformat()
        if reading.error is not None:
            dataset.attrs["error"] = reading.error
    return notes


def _dataset(group: h5py.Group, name: str, value: Any, notes: list[str]) -> h5py.Dataset:
    if value is None:
        return group.create_dataset(name, data="", dtype=h5py.string_dtype())
    if isinstance(value, str):
        return group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    try:
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return group.create_dataset(name, data=array)
    except (TypeError, ValueError):
        pass
    notes.append(f"{group.name}/{name}: {type(value).__name__} stored as its text")
    return group.create_dataset(name, data=repr(value), dtype=h5py.string_dtype())

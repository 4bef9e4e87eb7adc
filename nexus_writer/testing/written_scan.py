"""What the writer wrote of one scan, read back from its file into plain Python and numpy.

.. important::
   :func:`read_written_scan` opens the file, reads everything and closes it again before it
   returns (docs/reading-files.md: keep no HDF5 object past close); call it from any
   thread, once the writer has ended the scan.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 (registers the filters of compressed arrays)
import numpy as np

from .errors import ScanNotWrittenError


@dataclass(frozen=True)
class WrittenScan:
    """One scan's entry as written (docs/reading-files.md, "Layout of an entry")."""

    key: str  #: the scan's key in Redis (``writer/scan_key``)
    file: Path  #: the scan's own file (``<stem>_scans/scan_000N.h5``)
    entry: str  #: the entry's name, ``scan_000N`` (or ``scan_000N_2``...)
    status: str  #: ``writer/status``: SUCCEEDED, FAULT, STOPPED (RUNNING: not ended)
    messages: list[str]  #: ``writer/messages``: what went wrong, or was changed
    title: str
    end_reason: str | None  #: SUCCESS, USER_ABORT, FAILURE...; None before the end
    #: ``measurement/<name>``: every channel's points, by its short name
    data: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    #: ``metadata/``: the user metadata as published (text as str, groups as dicts)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: ``instrument/positioners_start``: every motor's position before the scan
    positioners_start: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)  #: ``comments/*/data``, in order
    #: ``missing_points`` and ``missing_reasons`` beside a channel's data, by its short
    #: name: each range of points recorded as missing, ``(first, count, reason)``, in the
    #: order the writer met them; a channel with none is absent (docs/testing.md says
    #: which lost points are only in ``messages``)
    missing: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    #: ``data_shape`` beside a channel of variable shape, by its short name: the true shape
    #: of each point, ``(npoints, ndim)``
    data_shapes: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``file::/entry`` in the scan's own file (the writer's events name the entry in
        the session's file, which links to this one)."""
        return f"{self.file}::/{self.entry}"


def read_written_scan(path: str | Path, entry: str) -> WrittenScan:
    """Read ``entry`` of ``path`` (the scan's own file, or the session's file that links it).

    Raises:
        FileNotFoundError: no file at ``path``.
        KeyError: the file has no entry ``entry``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scan file at {path}")
    with h5py.File(path, "r", locking=False) as handle:
        if entry not in handle:
            raise KeyError(f"{path} has no entry {entry!r} (it has: {sorted(handle)})")
        group = handle[entry]
        own_file = Path(group.file.filename)
        writer = group.get("writer", {})
        measurement = dict(group.get("measurement", {}).items())
        beside = {  # name -> the group holding the data (measurement/ links to it)
            name: group.file[posixpath.dirname(link.path)]
            for name in measurement
            if isinstance(link := group["measurement"].get(name, getlink=True), h5py.SoftLink)
        }
        return WrittenScan(
            key=_text(writer.get("scan_key")) or "",
            file=own_file if own_file.is_absolute() else path.parent / own_file,
            entry=entry,
            status=_text(writer.get("status")) or "",
            messages=_texts(writer.get("messages")),
            title=_text(group.get("title")) or "",
            end_reason=_text(group.get("end_reason")),
            data={name: np.asarray(item[()]) for name, item in measurement.items()},
            metadata=_tree(group.get("metadata")),
            positioners_start=_tree(group.get("instrument/positioners_start")),
            comments=[
                _text(note.get("data")) or ""
                for _, note in sorted(group.get("comments", {}).items())
            ],
            missing={
                name: _missing(parent)
                for name, parent in beside.items()
                if "missing_points" in parent
            },
            data_shapes={
                name: np.asarray(parent["data_shape"][()])
                for name, parent in beside.items()
                if "data_shape" in parent
            },
        )


def read_ended_scan(key: str, state: str, reason: str | None, url: str | None) -> WrittenScan:
    """The entry of a scan that the writer says has ended (``state``, ``reason`` and
    ``url`` of its end: ``file::/entry``).

    Raises:
        ScanNotWrittenError: the scan has no entry (``url`` is None): its file was refused.
    """
    if not url:
        raise ScanNotWrittenError(f"scan {key!r} ended {state} without an entry: {reason}")
    path, _, entry = url.partition("::/")
    return read_written_scan(path, entry)


def _missing(group: h5py.Group) -> list[tuple[int, int, str]]:
    points, reasons = group["missing_points"][()], _texts(group.get("missing_reasons"))
    runs = zip(points, reasons, strict=False)  # (a row each; read once the scan has ended)
    return [(int(first), int(count), why) for (first, count), why in runs]


def _text(item: Any) -> str | None:
    if item is None:
        return None
    value = item[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(item: Any) -> list[str]:
    if item is None:
        return []
    value = item[()]
    if isinstance(value, bytes | str):
        return [value.decode() if isinstance(value, bytes) else value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(value)]


def _tree(group: Any) -> dict[str, Any]:
    """A group as nested dicts: text as str, scalars as Python numbers, arrays as arrays."""
    if group is None:
        return {}
    tree: dict[str, Any] = {}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            tree[name] = _tree(item)
            continue
        value = item[()]
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        tree[name] = value
    return tree

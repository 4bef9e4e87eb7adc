"""Open NeXus files, shared by all scan writers of a process.

.. important::
   Any thread may open and release files; h5py serialises its calls with a global lock.
   Files are opened without HDF5 file locking (see docs/reading-files.md), so that readers
   such as silx can open them while scans are written.

Several scans of a session go to one file, one entry each, and may be written at the same
time: each file is opened once and shared, counted, and closed when its last writer
releases it.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import h5py

import nexus_writer
from sync_primitives import Lock

_lock = Lock()
_open: dict[Path, tuple[h5py.File, int]] = {}
#: Files that met an I/O error: never touched again, never closed (see abandon).
_abandoned: list[h5py.File] = []


def acquire(path: Path) -> h5py.File:
    """The open file at ``path``, created (with its NXroot attributes) if it does not exist.

    Never truncates: an existing file is opened to add entries.

    Raises:
        OSError: it cannot be created or opened (not HDF5, no space, ...).
    """
    with _lock:
        if path in _open:
            handle, users = _open[path]
            _open[path] = (handle, users + 1)
            return handle
        os.makedirs(path.parent, exist_ok=True)
        # Default format bounds on purpose: with libver="latest" HDF5 marks the file as
        # open for writing, and then no other process can open it until it is closed.
        handle = h5py.File(path, "a", locking=False)
        if "NX_class" not in handle.attrs:
            handle.attrs.update(
                NX_class="NXroot",
                creator="nexus-writer",
                creator_version=nexus_writer.__version__,
                file_name=str(path),
                file_time=datetime.now().astimezone().isoformat(),
                HDF5_Version=h5py.version.hdf5_version,
                h5py_version=h5py.version.version,
            )
        _open[path] = (handle, 1)
        return handle


def release(path: Path) -> None:
    """Undo one :func:`acquire`; the last one flushes and closes the file."""
    with _lock:
        handle, users = _open[path]
        if users > 1:
            _open[path] = (handle, users - 1)
            return
        del _open[path]
    handle.close()


def abandon(path: Path) -> None:
    """Forget the file at ``path`` without closing it, for all its users.

    After an I/O error (a full disk) HDF5's state for the file cannot be trusted, and
    flushing or closing it can crash the process (seen with HDF5 1.14 after ENOSPC). The
    handle is kept, untouched, so that garbage collection does not close it either; the
    next scan for that path opens it anew.
    """
    with _lock:
        entry = _open.pop(path, None)
        if entry is not None:
            _abandoned.append(entry[0])


def open_paths() -> list[Path]:
    """Files currently open (for statistics and tests)."""
    with _lock:
        return list(_open)

"""Open scan files of this process, and the ones abandoned after an I/O error.

.. important::
   Any thread may open and release files; h5py serialises its calls with a global lock.
   Files are opened without HDF5 file locking (see docs/reading-files.md), so that readers
   such as silx can open them while scans are written.

Each scan writes a file of its own (see :mod:`master`), open from the scan's start to its
end; this module knows which are open, and keeps the handles of abandoned ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from sync_primitives import Lock

from . import hdf5
from .master import root_attributes

_lock = Lock()
_open: dict[Path, h5py.File] = {}
#: Files that met an I/O error: never touched again, never closed (see abandon).
_abandoned: list[h5py.File] = []
#: A descriptor of each abandoned file, kept open for the life of the process.
_pinned: list[int] = []


def acquire(path: Path) -> h5py.File:
    """Open the scan file at ``path`` (made by :func:`master.claim_entry`) for writing.

    Raises:
        OSError: it cannot be opened (not HDF5, gone, ...).
        RuntimeError: it is open already (one scan per file).
    """
    with _lock:
        if path in _open:
            raise RuntimeError(f"{path} is already open: one scan, one file")
        # HDF5 1.8's format, not the latest: with libver="latest" HDF5 marks the file as
        # open for writing, and then no other process can open it until it is closed.
        # No chunk cache by default: see hdf5.CHUNK_CACHE.
        handle = h5py.File(path, "a", locking=False, libver=hdf5.FORMAT, rdcc_nbytes=0)
        if "NX_class" not in handle.attrs:
            handle.attrs.update(root_attributes(path))
        _open[path] = handle
        return handle


def release(path: Path) -> None:
    """Flush and close the file at ``path``."""
    with _lock:
        handle = _open.pop(path)
    handle.close()


def abandon(path: Path) -> None:
    """Forget the file at ``path`` without closing it.

    After an I/O error (a full disk, a file size limit) HDF5's state for the file cannot
    be trusted, and flushing or closing it can crash the process (seen with HDF5 1.14
    after ENOSPC and EFBIG). The handle is kept, so that garbage collection does not close
    it, and its descriptor is pointed at /dev/null: whatever HDF5 still does with it
    (closing every open file when the process exits) neither changes the file on disk as
    the error left it, nor meets the error again.
    """
    with _lock:
        handle = _open.pop(path, None)
        if handle is None:
            return
        _abandoned.append(handle)
        try:
            descriptor = handle.id.get_vfd_handle()
        except Exception:  # not the POSIX driver: nothing more to do
            return
        _pinned.append(os.dup(descriptor))
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, descriptor)
        finally:
            os.close(null)


def open_paths() -> list[Path]:
    """Files currently open (for statistics and tests)."""
    with _lock:
        return list(_open)

"""Open and abandoned scan files (nexus/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from nexus_writer.nexus import files


def test_an_abandoned_file_deleted_later_is_never_mistaken_for_a_new_one(tmp_path: Path) -> None:
    """HDF5 knows open files by inode: the abandoned file's inode must not come back as a
    new file's while HDF5 still counts it open (it refused to create the new file, or
    read the abandoned one's state for it)."""
    old = tmp_path / "scan_0001.h5"
    h5py.File(old, "w-", locking=False).close()
    handle = files.acquire(old)
    handle.create_dataset("x", data=np.arange(10))
    handle.flush()
    inode = old.stat().st_ino
    files.abandon(old)  # an I/O error, or the lease lost
    old.unlink()  # a later attempt replaces it
    for i in range(50):  # ext4 hands a freed inode number to the next file made
        new = tmp_path / f"new{i}.h5"
        with h5py.File(new, "w-", locking=False) as made:
            made["y"] = [i]
        assert new.stat().st_ino != inode
        with h5py.File(new, "r", locking=False) as read:
            assert list(read) == ["y"] and read["y"][0] == i
    assert old not in files.open_paths()


def test_an_abandoned_file_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "scan_0001.h5"
    h5py.File(path, "w-", locking=False).close()
    handle = files.acquire(path)
    handle.create_dataset("x", data=np.arange(10))
    handle.flush()
    before = path.read_bytes()
    files.abandon(path)
    handle.create_dataset("y", data=np.arange(10))  # whatever HDF5 still does with it
    handle.flush()
    assert path.read_bytes() == before
    assert os.path.getsize(path) == len(before)

"""The session's master file and the scan files it links: where each scan's entry lives.

.. important::
   Any thread may call these functions; the accesses of this process to one session's
   file are serialised by a lock of that file, and a master file is open only for the
   moment of a call.

Why a file per scan
-------------------
HDF5 is not crash-safe: a process that dies (``kill -9``, a segfault after an I/O error)
between flushes can leave a file that no longer opens. If every scan of a session wrote
into the session's one file, one crash could cost every scan ever finished in it. So each
scan writes its own file, ``<dir>/<stem>_scans/scan_000N.h5`` next to the session's
``<dir>/<stem>.h5``, which is a complete NeXus file by itself; the session's file, the
*master*, holds one external link per scan (``scan_000N`` -> that file's ``/scan_000N``)
and is opened only for a moment: to choose a scan's entry name, and to add its link. A
crash while a scan is written can cost that scan's file at most. Readers see the layout
as before: HDF5 and h5py follow external links (relative to the master's directory), and
so does ``nxcheck``. (An HDF5 writer in a worker process would keep the service alive
through a crash, but not the shared file readable: it is not the blast radius.)

Entry names: ``scan_000N``, or ``scan_000N_2``... when that name is taken, in the master
or by a scan file already on disk (another run of the session, or a crash that left a
scan file before its link). Each scan file has a ``<name>.key`` beside it, written before
the file, holding the scan's key: whatever state a crash leaves the file in, the name is
known to be that scan's. A scan seen again (the service restarted before it was finished)
is written again from its start under its own name if its entry was not finished, and not
at all if it was: never twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import h5py

import nexus_writer
from nexus_writer import atomic
from nexus_writer.child_process import stopped
from nexus_writer.green import pause
from nexus_writer.protocol import ScanDocument
from sync_primitives import Lock

from . import hdf5
from .names import entry_name, entry_order

_log = logging.getLogger(__name__)

#: How many scans of one number a session may hold (``scan_0007`` ... ``scan_0007_1000``).
MAX_OCCURRENCES = 1000

#: Seconds a scan waits for another process's lock on its session's file before the log
#: says who holds it (and again every LOCK_REPEAT seconds, for as long as it waits).
LOCK_WARN = 2.0
LOCK_REPEAT = 30.0

# One lock per session file (never dropped: a service writes few of them), so that a
# session file waited for (another process holds its flock) holds up no other.
_locks: dict[Path, Lock] = {}
_locks_lock = threading.Lock()  # native, held for a dict lookup only


def _lock_of(master: Path) -> Lock:
    with _locks_lock:
        return _locks.setdefault(master, Lock())


class Guard(Protocol):
    """What may forbid this process to change a session's file (a SessionLease)."""

    def fence(self) -> None:
        """Return when changes are allowed, waiting while that is in doubt; raise when they
        are not (LeaseLost)."""

    def trusted(self) -> bool:
        """Whether changes are allowed at this instant, without waiting; raise when they
        are not (LeaseLost)."""


@contextlib.contextmanager
def _session_locked(master: Path, guard: Guard | None) -> Iterator[None]:
    """Hold the session's file for a change: this process's lock, then an advisory lock
    (``flock``) on ``<stem>_scans/.lock``, so that two processes writing scans of one
    session's file (two sessions naming one file; a writer whose lease has just run out)
    never change it, or claim an entry name, at the same time.

    With a ``guard``, the lease is also checked with the flock held, so that no other
    process can change the file between the check and the change: a writer frozen
    (SIGSTOP, a stalled VM) after its last check and woken after another took the session
    over finds out before it touches the file, not after (its lease says so from its
    clock alone). That check never waits: a lease in doubt lets the flock go, waits for
    the lease (``guard.fence()``), and tries again; a process frozen while it held the
    flock would hold up every writer of the file.

    Another process holding the flock is waited for as long as it holds it, the log saying
    who it is (a process frozen with it, SIGSTOP or a stalled VM, holds up this session's
    file until it is woken or killed: whatever it was about to change, it had checked its
    lease for, and nothing else can stop it changing it). Waiting ends if this process's
    lease is lost meanwhile.

    Raises:
        OSError: the lock file cannot be made.
        Exception: whatever ``guard`` raised (LeaseLost; the lock is released).
    """
    with _lock_of(master):
        directory = scans_directory(master)
        os.makedirs(directory, exist_ok=True)
        descriptor = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            while True:
                if guard is not None:
                    guard.fence()  # waits, if it must, without the flock
                _flock(descriptor, master, guard)
                if guard is None or guard.trusted():
                    break
                fcntl.flock(descriptor, fcntl.LOCK_UN)  # in doubt meanwhile: not held
            yield
        finally:
            os.close(descriptor)  # releases the flock


def _flock(descriptor: int, master: Path, guard: Guard | None) -> None:
    """Take the flock of ``descriptor``, as long as it takes (see _session_locked).

    Raises:
        LeaseLost: ``guard``'s lease was lost while another process held the flock.
    """
    began = time.monotonic()
    warn = began + LOCK_WARN
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if guard is not None:
            guard.trusted()  # raises LeaseLost; a lease in doubt is waited out with the rest
        now = time.monotonic()
        if now >= warn:
            warn = now + LOCK_REPEAT
            holders = ", ".join(_describe(pid) for pid in lock_holders(descriptor))
            _log.warning(
                "%s: its lock (%s) has been held by %s for %.0f s: the scan waits for it",
                master,
                scans_directory(master) / ".lock",
                holders or "another process",
                now - began,
            )
        pause(0.005)  # no notification exists for a lock of another process


def lock_holders(lock: int | Path) -> list[int]:
    """The processes that hold a flock on ``lock`` (an open descriptor or a path), as
    Linux's /proc/locks says (empty elsewhere, or when nobody holds one)."""
    stat = os.fstat(lock) if isinstance(lock, int) else os.stat(lock)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as table:
            rows = [line.split() for line in table if "->" not in line]
    except OSError:
        return []
    return [int(row[4]) for row in rows if len(row) > 5 and row[1] == "FLOCK" and row[5] == inode]


def _describe(pid: int) -> str:
    """``pid N`` and, if it is stopped (SIGSTOP, a debugger), so."""
    return f"pid {pid} (stopped)" if stopped(pid) else f"pid {pid}"


class EntryExistsError(FileExistsError):
    """No entry name is left for the scan: nothing is overwritten."""


def scans_directory(master: Path) -> Path:
    """Where the scan files of the session file ``master`` go."""
    return master.parent / f"{master.stem}_scans"


def root_attributes(path: Path) -> dict[str, str]:
    """The NXroot attributes of a file made by the writer."""
    return {
        "NX_class": "NXroot",
        "creator": "nexus-writer",
        "creator_version": nexus_writer.__version__,
        "file_name": str(path),
        "file_time": datetime.now().astimezone().isoformat(),
        "HDF5_Version": h5py.version.hdf5_version,
        "h5py_version": h5py.version.version,
    }


@dataclass(frozen=True)
class Claim:
    """Where a scan is written: its entry name and scan file, ready to be filled."""

    name: str
    path: Path
    #: Why the name is not ``scan_000N`` (None when it is).
    renamed: str | None = None
    #: The scan had an unfinished entry (the writer stopped or died): it is written again
    #: from its start, and the old file kept beside as ``<name>.h5.partial``.
    resumed: bool = False


def claim_entry(
    master: Path,
    document: ScanDocument,
    open_file: Callable[[Path], h5py.File],
    guard: Guard | None = None,
) -> tuple[Claim, h5py.File]:
    """Choose the entry name of a scan, create its (empty) scan file, and open it with
    ``open_file(path)`` for writing before the session is unlocked.

    Opened later, by its path, the file could be another's: a writer frozen between the
    claim and the opening, woken after another service had taken the session over and
    written the scan again (a new file at that path), would open the new file and change
    it. Opened with the session locked after the lease was checked, the file is the one
    claimed; a later claim by another service moves it aside (``.partial``), and this
    writer's fenced writes never reach the new one.

    A scan is known by its key, recorded in ``<name>.key`` beside its scan file before the
    file is made (so that a crash cannot leave a file nobody can attribute). A new scan
    gets the first name that no scan holds; the scan file is created exclusively: two
    scans can never claim one name. A scan seen again whose entry is unfinished is written
    again from its start under its own name. ``guard``: see _session_locked.

    Raises:
        ScanAlreadyWritten: this scan has a finished entry already.
        EntryExistsError: the session holds MAX_OCCURRENCES scans of its number.
        OSError: the scan file cannot be created (the caller's roots were checked).
        Exception: whatever ``open_file`` raised.
    """
    with _session_locked(master, guard):
        handle = _open_master(master, "r") if master.exists() else None
        try:
            claim = _claim_name(master, document, handle)
        finally:
            if handle is not None:
                handle.close()
        return claim, open_file(claim.path)


def _claim_name(master: Path, document: ScanDocument, handle: h5py.File | None) -> Claim:
    """claim_entry's choice of a name, with the session locked (``handle``: the session's
    file, read-only, if it exists)."""
    directory = scans_directory(master)
    first = entry_name(document.number)
    for occurrence in range(1, MAX_OCCURRENCES + 1):
        name = entry_name(document.number, occurrence)
        path, key_file = directory / f"{name}.h5", directory / f"{name}.key"
        linked = handle is not None and name in handle
        if key_file.exists():
            if key_file.read_text() == document.key:
                return _again(master, name, path)
            continue
        if path.exists() and _key_in(path, name) == document.key:
            atomic.write_text(key_file, document.key)  # its key file was deleted
            return _again(master, name, path)
        if linked or path.exists():
            continue  # another scan's (or nobody's that can be told): kept
        atomic.write_text(key_file, document.key)
        created = h5py.File(path, "w-", locking=False, libver=hdf5.FORMAT)
        created.attrs.update(root_attributes(path))
        created.close()
        if name == first:
            return Claim(name, path)
        return Claim(
            name,
            path,
            f"entry {first} of {master} already holds another scan numbered "
            f"{document.number}: this scan ({document.key}) is written as {name}",
        )
    raise EntryExistsError(
        f"{master} already holds {MAX_OCCURRENCES} scans numbered {document.number}; "
        f"scan {document.key} is not written"
    )


def _create_master(master: Path) -> None:
    """Make an empty session file, whole or not at all: written aside, then linked into
    place (a crash leaves no half-made file; one made meanwhile by another is kept)."""
    partial = master.with_name(f".{master.name}.{os.getpid()}")
    with h5py.File(partial, "w", locking=False) as handle:
        handle.attrs.update(root_attributes(master))
    try:
        os.link(partial, master)
    except FileExistsError:
        pass
    finally:
        os.unlink(partial)


def _open_master(master: Path, mode: str) -> h5py.File:
    """Open the session's file; one that does not open (a crash while it was being made
    or written) is moved aside and made again from the scan files (_rebuild)."""
    try:
        return h5py.File(master, mode, locking=False)
    except OSError as exc:
        if not master.is_file() or master.is_symlink():
            raise  # not a file of ours gone bad (a directory...): never moved aside
        _rebuild(master, exc)
        return h5py.File(master, mode, locking=False)


def _rebuild(master: Path, error: Exception) -> None:
    """Make the session's file again: it only ever holds links, and every scan file has
    its name and a key beside it in the scans directory."""
    aside = master.with_name(f"{master.name}.broken-{datetime.now():%Y%m%dT%H%M%S%f}")
    os.replace(master, aside)
    _log.warning(
        "%s does not open (%s): moved aside as %s and made again from the scan files",
        master,
        error,
        aside.name,
    )
    _create_master(master)
    directory = scans_directory(master)
    names = [p.stem for p in directory.glob("*.key") if (directory / f"{p.stem}.h5").exists()]
    names.sort(key=lambda n: entry_order(n) or (0, 0))
    with h5py.File(master, "a", locking=False) as handle:
        for name in names:
            target = os.path.relpath(directory / f"{name}.h5", master.parent)
            handle[name] = h5py.ExternalLink(target, f"/{name}")
        if names:
            handle.attrs["default"] = names[-1]


class ScanAlreadyWritten(Exception):
    """The scan's entry is finished already: there is nothing to do."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url  #: ``<session file>::/<entry>`` of the finished entry


def _again(master: Path, name: str, path: Path) -> Claim:
    """The scan was claimed before: finished (nothing to do) or not (start it again)."""
    if _finished(path, name):
        raise ScanAlreadyWritten(
            f"{path} already holds the finished entry {name}", f"{master}::/{name}"
        )
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.partial"))
    created = h5py.File(path, "w-", locking=False, libver=hdf5.FORMAT)
    created.attrs.update(root_attributes(path))
    created.close()
    return Claim(name, path, resumed=True)


def _key_in(path: Path, name: str) -> str | None:
    """The scan key that the scan file at ``path`` records for entry ``name``, if it can
    be read."""
    try:
        with h5py.File(path, "r", locking=False) as handle:
            return scan_key(handle, name)
    except Exception:  # unreadable (a crash), not HDF5: cannot be told
        return None


def _finished(path: Path, name: str) -> bool:
    """True if the scan file holds a finished entry: ``end_time`` written (it goes last,
    after a flush of everything else) with any status but STOPPED (the writer stopped
    before the scan closed), and every object of the entry opens (a process killed
    during a flush can leave objects beyond the end of the file that HDF5 knows)."""
    try:
        with h5py.File(path, "r", locking=False) as handle:
            entry = handle[name]
            status = entry["writer/status"][()]
            if "end_time" not in entry or status in (b"STOPPED", "STOPPED"):
                return False
            entry["end_time"][()]
            entry.visititems(lambda _name, _object: None)  # opens each object
            return True
    except Exception:  # missing, unreadable (a crash), not ours: not finished
        return False


def link_entry(master: Path, name: str, scan_file: Path, guard: Guard | None = None) -> None:
    """Add the external link ``name`` -> ``scan_file:/name`` to ``master`` (created if
    needed, never truncated; nothing to do if the link is there), and make it the master's
    default if it is the newest. ``guard``: see _session_locked."""
    with _session_locked(master, guard):
        if not master.exists():
            _create_master(master)
        handle = _open_master(master, "a")
        try:
            if "NX_class" not in handle.attrs:
                handle.attrs.update(root_attributes(master))
            target = os.path.relpath(scan_file, master.parent)
            if name not in handle:
                handle[name] = h5py.ExternalLink(target, f"/{name}")
            current = handle.attrs.get("default")
            current = current.decode() if isinstance(current, bytes) else current
            order, mine = entry_order(current), entry_order(name)
            if order is None or (mine is not None and order < mine):
                handle.attrs["default"] = name
        finally:
            handle.close()


def entry_of_scan(file: h5py.File, key: str, number: int) -> str | None:
    """The name of the entry that scan ``key`` (number ``number``) was written to in the
    master ``file``, or None. Entries record their scan's key in ``writer/scan_key``."""
    for occurrence in range(1, MAX_OCCURRENCES + 1):
        name = entry_name(number, occurrence)
        if name not in file:
            return None
        if scan_key(file, name) == key:
            return name
    return None


def scan_key(file: h5py.File, name: str) -> str | None:
    """The key recorded in entry ``name``; None for anything else there (not an entry of
    ours, one written before keys were recorded, a dangling link, a dataset...)."""
    try:
        value = file[f"{name}/writer/scan_key"][()]
    except Exception:  # whatever another program left under that name
        return None
    return value.decode() if isinstance(value, bytes) else str(value)

"""How files are written: roots, compression, chunking. Chosen by the service's options.

.. important::
   Frozen data: shared by all threads.
"""

from __future__ import annotations

import enum
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hdf5plugin

MiB = 1 << 20

_COUNTS = (
    "chunk_bytes",
    "min_free_bytes",
    "write_bytes",
    "max_point_bytes",
    "max_points",
    "max_channels",
    "max_metadata_items",
)


class Compression(enum.Enum):
    """Filter for datasets whose points are arrays (scalars are never compressed)."""

    BITSHUFFLE_LZ4 = "bitshuffle"  #: hdf5plugin's; ~20x the speed of gzip at a similar ratio
    GZIP = "gzip"  #: readable without plugins
    NONE = "none"

    def dataset_options(self) -> dict[str, Any]:
        if self is Compression.BITSHUFFLE_LZ4:
            return dict(hdf5plugin.Bitshuffle(cname="lz4"))
        if self is Compression.GZIP:
            return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        return {}


class PathRefusedError(PermissionError):
    """A path the writer will not use: not absolute, or outside its root directories once
    every symbolic link in it is resolved. The publisher's mistake (or an attack): the
    scan is not written again."""


@dataclass(frozen=True)
class WriterOptions:
    """Options of the NeXus writers, checked when made.

    Raises:
        ValueError: a time (``inactivity_timeout``, ``retry_max_delay``) that is not a
            positive, finite number of seconds, or a size or limit that is not a whole
            number of at least 1 (``min_free_bytes``: of at least 0); the message names
            the option.
    """

    #: Files may only be written below these directories (empty: anywhere).
    roots: tuple[Path, ...] = ()
    compression: Compression = Compression.BITSHUFFLE_LZ4
    chunk_bytes: int = MiB
    #: A scan with nothing new for this long, and not closed, is closed by the writer.
    inactivity_timeout: float = 600.0
    #: Longest wait between attempts to reach Redis again.
    retry_max_delay: float = 5.0
    #: A batch is only written if its disk keeps this much free beyond the batch itself:
    #: HDF5 cannot be trusted after it meets a full disk (it may even crash the process),
    #: so the writer stops a scan cleanly before that happens.
    min_free_bytes: int = 64 * MiB
    #: Points of a batch are written in slices of about this size, each checked against
    #: the free space: a full disk stops a scan with everything that fitted.
    write_bytes: int = 8 * MiB
    #: A channel whose one point is larger is not written (HDF5 chunks hold 4 GiB at most;
    #: no publisher may make the service allocate without bound).
    max_point_bytes: int = 256 * MiB
    #: A point index at or beyond this is refused (a publisher's ``i`` of 2**62 would make
    #: a dataset of that many rows).
    max_points: int = 2**32
    #: Channels of a scan beyond this many are not written (entry creation costs about
    #: 0.6 ms per channel).
    max_channels: int = 10_000
    #: User metadata with more items is stored as one JSON text (metadata/json).
    max_metadata_items: int = 10_000

    def __post_init__(self) -> None:
        for name in ("inactivity_timeout", "retry_max_delay"):
            seconds = getattr(self, name)
            if isinstance(seconds, bool) or not (
                isinstance(seconds, numbers.Real) and 0 < float(seconds) < math.inf
            ):  # also NaN
                raise ValueError(
                    f"{name} must be a positive, finite number of seconds, not {seconds!r}"
                )
        for name in _COUNTS:
            value = getattr(self, name)
            least = 0 if name == "min_free_bytes" else 1
            if isinstance(value, bool) or not (
                isinstance(value, numbers.Integral) and int(value) >= least
            ):
                raise ValueError(
                    f"{name} must be a whole number of at least {least}, not {value!r}"
                )

    def check_path(self, path: str) -> Path:
        """The path of a file to write, with every symbolic link resolved, after checking
        where it is: a link inside a root that points outside it does not lead out.

        Raises:
            PathRefusedError: not absolute, or outside the roots.
            PermissionError: its directory cannot be written.
        """
        target = self._resolve(path, "file")
        if target.exists() and not target.is_file():
            raise PathRefusedError(f"file {path} exists and is not a regular file")
        directory = target.parent
        existing = directory
        while not existing.exists():
            existing = existing.parent
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create {target}: {existing} is not writable")
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(f"{target} exists and is not writable")
        return target

    def check_source(self, path: str) -> str:
        """A file that the written file will refer to (a detector's frames): absolute, and
        below a root (symbolic links resolved), like the files written. Returns it as given.

        Raises:
            PathRefusedError: not absolute, or outside the roots.
        """
        self._resolve(path, "frame file")
        return path

    def check_opened(self, path: Path, descriptor: int) -> None:
        """Check, once a file is open, that it is the file at ``path`` and below a root:
        a symbolic link swapped in between the check and the opening is caught.

        Raises:
            PathRefusedError: it is not.
        """
        real = Path(os.path.realpath(path))
        opened, there = os.fstat(descriptor), os.stat(real)
        if (opened.st_dev, opened.st_ino) != (there.st_dev, there.st_ino) or not self.within(real):
            raise PathRefusedError(
                f"{path} changed while it was opened (a symbolic link swapped in?): not written"
            )

    def within(self, target: Path) -> bool:
        """True if the resolved path ``target`` is below a root (or there are no roots)."""
        return not self.roots or any(target.is_relative_to(r.resolve()) for r in self.roots)

    def _resolve(self, path: str, what: str) -> Path:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise PathRefusedError(f"{what} {path!r} is not an absolute path")
        try:
            path.encode()  # what h5py gives HDF5: UTF-8, strictly
            if "\0" in path:
                raise ValueError("a NUL character")
            target = Path(path).resolve()
        except (ValueError, UnicodeError, OSError, RuntimeError) as exc:  # a link loop...
            raise PathRefusedError(f"{what} {path!r} cannot be a path: {exc}") from None
        if not self.within(target):
            roots = ", ".join(str(r) for r in self.roots)
            shown = path if str(target) == os.path.normpath(path) else f"{path} (-> {target})"
            raise PathRefusedError(
                f"{what} {shown} is outside the writer's root directories ({roots})"
            )
        return target

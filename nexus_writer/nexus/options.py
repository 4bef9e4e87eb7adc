"""How files are written: roots, compression, chunking. Chosen by the service's options.

.. important::
   Frozen data: shared by all threads.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hdf5plugin

MiB = 1 << 20


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


class OutsideRootsError(PermissionError):
    """A file to write is outside the writer's root directories."""


@dataclass(frozen=True)
class WriterOptions:
    """Options of the NeXus writers."""

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

    def check_path(self, path: str) -> Path:
        """The absolute path of a file to write, after checking where it is.

        Raises:
            OutsideRootsError: outside the roots.
            PermissionError: its directory cannot be written.
        """
        target = Path(os.path.abspath(path))
        if self.roots and not any(target.is_relative_to(r.resolve()) for r in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise OutsideRootsError(f"{target} is outside the writer's root directories ({roots})")
        directory = target.parent
        existing = directory
        while not existing.exists():
            existing = existing.parent
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create {target}: {existing} is not writable")
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(f"{target} exists and is not writable")
        return target

"""Fake but plausible detector signals, and detector files written as a real detector would.

.. important::
   A :class:`Signals` or :class:`DetectorFiles` object is used by one thread at a time.

Every signal depends on how close the beam is to a peak at 0.5 mm on each scanned motor,
so that scans show peaks, meshes show a spot, and time scans show a slow drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

PEAK_CENTRE = 0.5  # mm
PEAK_WIDTH = 0.2  # mm
MCA_CHANNELS = 4096
#: Where frames are in a detector file (the layout LIMA writes).
FRAME_DATASET = "/entry_0000/measurement/data"


class Signals:
    """Signals of one scan; ``seed`` makes them reproducible."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def intensity(
        self, motors: dict[str, np.ndarray[Any, Any]], elapsed: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        """Relative beam intensity (0..1] per point."""
        if not motors:
            return 0.6 + 0.4 * np.sin(elapsed / 3.0) ** 2
        distance = sum((p - PEAK_CENTRE) ** 2 for p in motors.values())
        return np.asarray(0.02 + np.exp(-distance / (2 * PEAK_WIDTH**2)), dtype="<f8")

    def counter(
        self, intensity: np.ndarray[Any, Any], scale: float, dtype: str
    ) -> np.ndarray[Any, Any]:
        counts = self._rng.poisson(scale * intensity)
        return counts.astype(dtype)

    def spectrum(self, intensity: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """One 4096-channel MCA spectrum per point (uint32 counts)."""
        energy = np.arange(MCA_CHANNELS)
        lines = sum(
            h * np.exp(-((energy - c) ** 2) / (2 * w**2))
            for c, w, h in ((800, 12, 900), (1750, 20, 400), (2900, 30, 250))
        )
        shape = 20 + lines
        return self._rng.poisson(np.outer(intensity, shape)).astype("<u4")

    def image(
        self, intensity: np.ndarray[Any, Any], shape: tuple[int, int]
    ) -> np.ndarray[Any, Any]:
        """One frame per point (uint16): a spot whose brightness follows the intensity."""
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        spot = np.exp(
            -(((rows - shape[0] / 2) ** 2) + (cols - shape[1] / 2) ** 2)
            / (2 * (min(shape) / 8) ** 2)
        )
        mean = np.multiply.outer(intensity, 2 + 1000 * spot)
        frames: np.ndarray[Any, Any] = np.minimum(self._rng.poisson(mean), 65535).astype("<u2")
        return frames


@dataclass(frozen=True)
class FileRef:
    """Points ``first`` .. ``first + count - 1`` are frames ``frame`` ... of ``file``."""

    first: int
    count: int
    file: str
    frame: int


class DetectorFiles:
    """Writes frames into numbered HDF5 files of ``frames_per_file`` frames each."""

    def __init__(self, directory: str, name: str, frames_per_file: int = 50) -> None:
        self.directory = directory
        self.name = name
        self.frames_per_file = frames_per_file
        self.files: list[str] = []
        self._written = 0
        self._file: h5py.File | None = None

    def write(self, frames: np.ndarray[Any, Any]) -> list[FileRef]:
        """Append frames, flush them to disk, and say where they went."""
        refs = []
        offset = 0
        while offset < len(frames):
            in_file = self._written % self.frames_per_file
            if in_file == 0:
                self._open_next(frames.shape[1:], frames.dtype)
            assert self._file is not None
            take = min(len(frames) - offset, self.frames_per_file - in_file)
            dataset = self._file[FRAME_DATASET]
            dataset.resize(in_file + take, axis=0)
            dataset[in_file : in_file + take] = frames[offset : offset + take]
            self._file.flush()
            refs.append(FileRef(self._written, take, self.files[-1], in_file))
            self._written += take
            offset += take
        return refs

    def _open_next(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.close()
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{self.name}_{len(self.files):04d}.h5")
        self._file = h5py.File(path, "w")
        self._file.create_dataset(
            FRAME_DATASET,
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype=dtype,
            chunks=(1, *shape),
        )
        self.files.append(path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

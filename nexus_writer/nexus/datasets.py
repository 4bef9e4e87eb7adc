"""How channel data is stored: growing chunked datasets, padded variable shapes, and virtual
datasets over detector files.

.. important::
   A dataset writer belongs to the consumer greenlet of one scan (one thread at a time).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from nexus_writer.protocol import Channel
from nexus_writer.protocol.reader import Points

from . import hdf5
from .options import WriterOptions

#: Rows per chunk of a scalar channel whose length is not known in advance.
OPEN_ENDED_SCALAR_ROWS = 4096


def fill_value(dtype: np.dtype[Any]) -> float | int | bool:
    """What unwritten points read as: NaN for floats, 0 otherwise."""
    return math.nan if dtype.kind == "f" else 0


class PointTooLargeError(ValueError):
    """Points that would make one point of the dataset larger than the limit."""


class GrowingDataset:
    """The points of one channel: shape ``(n, *point_shape)``, growing along the first axis.

    A channel of variable point shape (``-1`` dimensions) is padded to the largest point so
    far with the fill value, and the true shape of each point goes to a ``<name>_shape``
    dataset beside it.
    """

    def __init__(
        self,
        group: h5py.Group,
        name: str,
        channel: Channel,
        options: WriterOptions,
        npoints: int | None,
    ) -> None:
        self.channel = channel
        self.max_point_bytes = options.max_point_bytes
        dtype = channel.numpy_dtype
        point_shape = tuple(1 if n == -1 else n for n in channel.shape)
        itemsize_per_point = max(1, math.prod(point_shape) * dtype.itemsize)
        rows = max(1, options.chunk_bytes // itemsize_per_point)
        if channel.variable:
            rows = min(rows, 64)
        if npoints:
            rows = min(rows, npoints)
        elif not channel.shape:
            rows = min(rows, OPEN_ENDED_SCALAR_ROWS)
        compression = options.compression.dataset_options() if channel.shape else {}
        maxshape = (None, *(None if n == -1 else n for n in channel.shape))
        chunks = (rows, *(max(1, n) if n != -1 else 256 for n in channel.shape))
        self._dataset: h5py.Dataset | None = None
        self._appender: hdf5.Appender | None = None
        self.shapes: h5py.Dataset | None = None
        if channel.variable:
            self._dataset = group.create_dataset(
                name,
                shape=(0, *point_shape),
                maxshape=maxshape,
                chunks=chunks,
                dtype=dtype,
                fillvalue=fill_value(dtype),
                **compression,
                **(hdf5.chunk_cache(chunks, dtype.itemsize) if compression else {}),
            )
            self._id = self._dataset.id
            self.shapes = group.create_dataset(
                f"{name}_shape",
                shape=(0, len(channel.shape)),
                maxshape=(None, len(channel.shape)),
                dtype="<i8",
                chunks=(1024, len(channel.shape)),
            )
        else:
            self._appender = hdf5.create_growing(
                group,
                name,
                point_shape=point_shape,
                maxshape=maxshape,
                chunks=chunks,
                dtype=dtype,
                fillvalue=fill_value(dtype),
                options=compression,
            )
            self._id = self._appender.id
        if channel.unit:
            hdf5.add_text(self._id, "units", channel.unit)

    @property
    def dataset(self) -> h5py.Dataset:
        """The h5py dataset (made when first asked for: it costs more than the low-level
        one that writes)."""
        if self._dataset is None:
            self._dataset = h5py.Dataset(self._id)
        return self._dataset

    @property
    def length(self) -> int:
        if self._appender is not None:
            return self._appender.length
        return int(self.dataset.shape[0])

    def write(self, runs: list[tuple[int, Points]]) -> None:
        """Write each run of points ``first`` .. onwards, in order (growing the dataset; a
        gap stays at the fill value).

        Raises:
            PointTooLargeError: see :meth:`_write_variable`.
            RuntimeError: a chunk could not be compressed.
        """
        if self._appender is None:  # a variable shape
            for first, data in runs:
                assert isinstance(data, list)
                self._write_variable(first, data)
            return
        fixed = [(first, data) for first, data in runs if not isinstance(data, list)]
        assert len(fixed) == len(runs)  # a fixed shape
        self._appender.write_runs(fixed)

    def _write_variable(self, first: int, arrays: list[np.ndarray[Any, Any]]) -> None:
        """Points of varying shapes, each padded to the widest of each dimension so far.
        A point that would make that padding larger than the limit ([1, 3e6] then
        [3e6, 1] make every point 3e6 x 3e6) is not written; the others are.

        Raises:
            PointTooLargeError: after writing the others, naming the points refused.
        """
        assert self.shapes is not None
        itemsize = self.dataset.dtype.itemsize
        grown = tuple(self.dataset.shape[1:])
        accepted: list[tuple[int, np.ndarray[Any, Any]]] = []
        refused: list[int] = []
        for index, array in enumerate(arrays, start=first):
            wider = tuple(max(g, n) for g, n in zip(grown, array.shape, strict=True))
            if math.prod(wider) * itemsize > self.max_point_bytes:
                refused.append(index)
                continue
            grown = wider
            accepted.append((index, array))
        if accepted:
            end = accepted[-1][0] + 1
            self.dataset.resize((max(end, self.length), *grown))
            self.shapes.resize(max(end, self.shapes.shape[0]), axis=0)
            for index, array in accepted:
                where = (index, *(slice(0, n) for n in array.shape))
                self.dataset[where] = array
                self.shapes[index] = array.shape
        if refused:
            raise PointTooLargeError(
                f"channel {self.channel.name!r}: points {refused[:10]} would pad every point "
                f"beyond the limit of {self.max_point_bytes:,} bytes (--max-point-bytes): "
                "not written"
            )


@dataclass(frozen=True)
class FrameSource:
    """Points ``first`` .. ``first + count - 1`` are frames ``frame`` ... of ``dataset``
    in the detector file ``file``."""

    first: int
    count: int
    file: str
    dataset: str
    frame: int


def write_frame_references(
    group: h5py.Group,
    name: str,
    channel: Channel,
    sources: list[FrameSource],
    master: str,
    *,
    points: int = 0,
) -> h5py.Dataset:
    """(Re)create ``group[name]`` as a virtual dataset of all frames referenced so far, at
    least ``points`` long (points not referred to read as the fill value).

    Detector files are named relative to the master file's directory when they are below
    it, so that a moved directory tree still reads.
    """
    total = max([points, *(s.first + s.count for s in sources)])
    layout = h5py.VirtualLayout(shape=(total, *channel.shape), dtype=channel.numpy_dtype)
    master_dir = os.path.dirname(master)
    for source in sources:
        file = source.file
        if os.path.isabs(file) and os.path.commonpath([file, master_dir]) == master_dir:
            file = os.path.relpath(file, master_dir)
        end = source.frame + source.count
        virtual = h5py.VirtualSource(
            file, source.dataset, shape=(end, *channel.shape), dtype=channel.numpy_dtype
        )
        layout[source.first : source.first + source.count] = virtual[source.frame : end]
    if name in group:
        del group[name]
    fill = fill_value(channel.numpy_dtype)
    dataset = group.create_virtual_dataset(name, layout, fillvalue=fill)
    if channel.unit:
        dataset.attrs["units"] = channel.unit
    return dataset

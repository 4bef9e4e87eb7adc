"""HDF5 calls on the writer's hot paths, made through h5py's low-level API.

.. important::
   Plain functions over h5py objects, and a cache of creation templates that any thread
   may use: h5py serialises every HDF5 call with its global lock.

h5py's high-level calls cost 50-300 us each in Python around HDF5's own work (measured on
HDF5 2.0 / h5py 3.16: ``create_dataset`` 330 us, ``attrs[...] =`` 107 us, ``dataset[a:b] =``
114 us, against 36-74, 21 and 24 us through the low-level API). A scan of thousands of
channels makes and grows thousands of objects, so these few calls go the short way; what
they make is the same as the high-level calls make (the same types, filters and fill
values), and the rest of the writer uses h5py's high-level API.

Scan files are made with the file-format bounds ``FORMAT``: from HDF5 1.8's format (its
superblock and object headers make creating a dataset about twice as fast as the
earliest format) up to 1.10's where a feature needs it (virtual datasets). A reader with
default settings can still open the file while it is written: with 1.10's superblock
(``libver`` from "v110", or "latest"), HDF5 marks the file as open for writing and other
programs cannot open it.
"""

from __future__ import annotations

import threading
from typing import Any

import h5py
import numpy as np

#: libver of scan files: HDF5 1.8's format, 1.10's for virtual datasets.
FORMAT = ("v108", "v110")

_TEXT = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)
#: (dtype, chunks, maxshape, options) -> (type, dataset creation property list)
_templates: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_templates_lock = threading.Lock()
_MAX_TEMPLATES = 256


def add_text(object_id: Any, name: str, value: str) -> None:
    """A new attribute ``name`` (the object has none of that name) of the object whose
    low-level id is ``object_id``: the text ``value``, variable-length UTF-8, as
    ``obj.attrs[name] = value`` stores it."""
    attr = h5py.h5a.create(object_id, name.encode(), _TEXT, _SCALAR)
    attr.write(np.array(value, dtype=h5py.string_dtype()))


def create_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    """A new group with its ``NX_class``."""
    group_id = h5py.h5g.create(parent.id, name.encode())
    add_text(group_id, "NX_class", nx_class)
    return h5py.Group(group_id)


def soft_link(group: h5py.Group, name: str, target: str) -> None:
    """``group[name] = h5py.SoftLink(target)``."""
    group.id.links.create_soft(name.encode(), target.encode())


def create_growing(
    group: h5py.Group,
    name: str,
    *,
    point_shape: tuple[int, ...],
    maxshape: tuple[int | None, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
    fillvalue: Any,
    options: dict[str, Any],
) -> Any:
    """An empty chunked dataset of shape ``(0, *point_shape)`` growing along its first
    axis; ``options`` are h5py's ``create_dataset`` keywords for the filters. Returns its
    low-level id (``h5py.Dataset(id)`` makes the high-level object, for 25 us).

    The first dataset of each kind is made by h5py; the others copy its type and creation
    properties (filters, chunks, fill value) and are made by one HDF5 call.
    """
    key = (dtype.str, chunks, maxshape, repr(fillvalue), tuple(sorted(options.items())))
    template = _templates.get(key)
    shape = (0, *point_shape)
    if template is None:
        dataset = group.create_dataset(
            name,
            shape=shape,
            maxshape=maxshape,
            chunks=chunks,
            dtype=dtype,
            fillvalue=fillvalue,
            **options,
        )
        with _templates_lock:
            if len(_templates) >= _MAX_TEMPLATES:
                _templates.clear()
            _templates[key] = (dataset.id.get_type(), dataset.id.get_create_plist())
        return dataset.id
    type_id, dcpl = template
    space = h5py.h5s.create_simple(shape, _unlimited(maxshape))
    return h5py.h5d.create(group.id, name.encode(), type_id, space, dcpl=dcpl)


def _unlimited(maxshape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(h5py.h5s.UNLIMITED if n is None else n for n in maxshape)


class Appender:
    """Writes rows of an empty, growing dataset of fixed point shape (made by
    :func:`create_growing`) by low-level calls: one ``set_extent`` when it grows and one
    ``write`` per call."""

    def __init__(
        self, dataset_id: Any, point_shape: tuple[int, ...], maxshape: tuple[int | None, ...]
    ) -> None:
        self._id = dataset_id
        #: Rows the dataset has (written, or left at the fill value before written ones).
        self.length = 0
        self._point = point_shape
        self._maxshape = _unlimited(maxshape)

    def write(self, first: int, data: np.ndarray) -> None:
        """Rows ``first`` .. ``first + len(data) - 1`` (the dataset grows to hold them;
        rows skipped stay at the fill value)."""
        rows = len(data)
        end = first + rows
        dataset_id = self._id
        if end > self.length:
            dataset_id.set_extent((end, *self._point))
            self.length = end
        file_space = h5py.h5s.create_simple((self.length, *self._point), self._maxshape)
        file_space.select_hyperslab((first, *(0 for _ in self._point)), (rows, *self._point))
        memory_space = h5py.h5s.create_simple((rows, *self._point))
        dataset_id.write(memory_space, file_space, np.ascontiguousarray(data))

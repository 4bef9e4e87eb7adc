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

HDF5 keeps chunks in a cache of 1 MiB per open dataset by default, written or not: with
hundreds of channels, a scan's process grows by the data it writes until every cache is
full (150 MiB for 100 channels, 3 GiB for 3000), and every flush writes each cached chunk
again. A scan only appends, so a chunk it has filled is never touched again. Scan files
are therefore opened without a chunk cache: uncompressed rows go straight to the file
(for a 15 % faster write and flush), and a compressed dataset keeps a cache of one chunk,
the one being filled (:func:`chunk_cache`), so that each write does not read and
decompress it again.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import h5py
import numpy as np

from .chunk_compression import ChunkCodec, codec_for, compress_chunks

#: libver of scan files: HDF5 1.8's format, 1.10's for virtual datasets.
FORMAT = ("v108", "v110")

_TEXT = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)
#: (dtype, chunks, maxshape, options) -> (type, dataset creation property list, codec)
_templates: dict[tuple[Any, ...], tuple[Any, Any, ChunkCodec | None]] = {}
_templates_lock = threading.Lock()
_MAX_TEMPLATES = 256


def chunk_cache(chunks: tuple[int, ...], itemsize: int) -> dict[str, Any]:
    """h5py's keywords for a dataset cache that holds one chunk of shape ``chunks``."""
    return {"rdcc_nbytes": math.prod(chunks) * itemsize, "rdcc_nslots": 1, "rdcc_w0": 1.0}


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
    dtype: np.dtype[Any],
    fillvalue: Any,
    options: dict[str, Any],
) -> Appender:
    """An empty chunked dataset of shape ``(0, *point_shape)`` growing along its first
    axis; ``options`` are h5py's ``create_dataset`` keywords for the filters. Returns the
    :class:`Appender` that writes it (``appender.id`` is its low-level id;
    ``h5py.Dataset(id)`` makes the high-level object, for 25 us).

    The first dataset of each kind is made by h5py; the others copy its type and creation
    properties (filters, chunks, fill value) and are made by one HDF5 call.
    """
    key = (dtype.str, chunks, maxshape, repr(fillvalue), tuple(sorted(options.items())))
    template = _templates.get(key)
    shape = (0, *point_shape)
    cache = chunk_cache(chunks, dtype.itemsize) if options else {}
    if template is None:
        dataset = group.create_dataset(
            name,
            shape=shape,
            maxshape=maxshape,
            chunks=chunks,
            dtype=dtype,
            fillvalue=fillvalue,
            **options,
            **cache,
        )
        dcpl = dataset.id.get_create_plist()
        codec = codec_for(dcpl, dtype) if options else None
        _restore_filter_options(dcpl, options)
        with _templates_lock:
            if len(_templates) >= _MAX_TEMPLATES:
                _templates.clear()
            _templates[key] = (dataset.id.get_type(), dcpl, codec)
        return Appender(dataset.id, point_shape, maxshape, chunks[0], codec)
    type_id, dcpl, codec = template
    space = h5py.h5s.create_simple(shape, _unlimited(maxshape))
    dapl = None
    if cache:
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_chunk_cache(cache["rdcc_nslots"], cache["rdcc_nbytes"], cache["rdcc_w0"])
    dataset_id = h5py.h5d.create(group.id, name.encode(), type_id, space, dcpl=dcpl, dapl=dapl)
    return Appender(dataset_id, point_shape, maxshape, chunks[0], codec)


def _restore_filter_options(dcpl: Any, options: dict[str, Any]) -> None:
    """Give the filter that ``options`` name (a plugin's, by number) its own parameters
    again in ``dcpl``, a dataset's creation properties.

    A dataset's properties hold its filters' parameters as the filters' ``set_local``
    made them for that dataset, and HDF5 applies ``set_local`` again to a dataset made
    from them. That is harmless for HDF5's own filters, but bitshuffle's prepends its
    header once more: the next dataset would be stored with another compression setting
    (in fact, not compressed at all).
    """
    code, values = options.get("compression"), options.get("compression_opts")
    if not isinstance(code, int) or values is None:
        return
    flags = dcpl.get_filter_by_id(code)[0]
    dcpl.remove_filter(code)
    dcpl.set_filter(code, flags, tuple(values))


def _unlimited(maxshape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(h5py.h5s.UNLIMITED if n is None else n for n in maxshape)


class Appender:
    """Writes rows of an empty, growing dataset of fixed point shape (made by
    :func:`create_growing`) by low-level calls: one ``set_extent`` when it grows and one
    ``write`` per call; with a ``codec``, the chunks that a call covers whole are
    compressed on several cores and written directly (:mod:`.chunk_compression`)."""

    def __init__(
        self,
        dataset_id: Any,
        point_shape: tuple[int, ...],
        maxshape: tuple[int | None, ...],
        chunk_rows: int,
        codec: ChunkCodec | None,
    ) -> None:
        self.id = dataset_id
        #: Rows the dataset has (written, or left at the fill value before written ones).
        self.length = 0
        self._point = point_shape
        self._maxshape = _unlimited(maxshape)
        self._chunk_rows = chunk_rows
        self._codec = codec

    def write(self, first: int, data: np.ndarray[Any, Any]) -> None:
        """Rows ``first`` .. ``first + len(data) - 1`` (the dataset grows to hold them;
        rows skipped stay at the fill value).

        Raises:
            RuntimeError: a chunk could not be compressed.
        """
        self.write_runs([(first, data)])

    def write_runs(self, runs: list[tuple[int, np.ndarray[Any, Any]]]) -> None:
        """Several :meth:`write` calls, in this order; the whole chunks of all of them are
        compressed at once (a batch of frames, one per entry, keeps every core busy).

        Raises:
            RuntimeError: a chunk could not be compressed (the runs before it are written).
        """
        end = max(first + len(data) for first, data in runs)
        if end > self.length:
            self.id.set_extent((end, *self._point))
            self.length = end
        codec, step = self._codec, self._chunk_rows
        if codec is None or any(data.dtype != codec.dtype for _, data in runs):
            for first, data in runs:
                self._write(first, data)
            return
        # Whole chunks go compressed and direct; a part of a chunk at either end of a run
        # goes through HDF5 (which merges it with what the chunk already holds).
        steps: list[tuple[int, np.ndarray[Any, Any], bool]] = []  # (first row, rows, whole chunk)
        for first, data in runs:
            run_end = first + len(data)
            whole_from = min(-(-first // step) * step, run_end)
            whole_to = whole_from + (run_end - whole_from) // step * step
            if whole_from > first:
                steps.append((first, data[: whole_from - first], False))
            for row in range(whole_from, whole_to, step):
                steps.append((row, data[row - first : row - first + step], True))
            if run_end > whole_to:
                steps.append((whole_to, data[whole_to - first :], False))
        chunks = [piece for _, piece, whole in steps if whole]
        compressed = iter(compress_chunks(codec, chunks))
        zeros = (0,) * len(self._point)
        for row, piece, whole in steps:
            if whole:
                self.id.write_direct_chunk((row, *zeros), next(compressed).get())
            else:
                self._write(row, piece)

    def _write(self, first: int, data: np.ndarray[Any, Any]) -> None:
        rows = len(data)
        dataset_id = self.id
        file_space = h5py.h5s.create_simple((self.length, *self._point), self._maxshape)
        file_space.select_hyperslab((first, *(0 for _ in self._point)), (rows, *self._point))
        memory_space = h5py.h5s.create_simple((rows, *self._point))
        dataset_id.write(memory_space, file_space, np.ascontiguousarray(data))

"""Compressing whole chunks on several cores, for HDF5's direct chunk writes.

.. important::
   One process-wide :class:`CompressionPool` of worker threads (``sync_primitives.Thread``),
   used by the consumers of every scan, from any thread or greenlet: a caller waits for its
   chunks on ``AsyncResult.get``, which yields to the caller's hub if it has one. A
   :class:`ChunkCodec` is immutable and used by the workers concurrently.

HDF5 compresses a chunk inside ``H5Dwrite``, under h5py's global lock: one core compresses
for the whole process (bitshuffle-LZ4 runs at about 650-900 MB/s on this machine, less than
the disk). A chunk that a write covers whole is instead compressed here, by the same
filter's own code, on a worker thread that does not hold the GIL, and written with
``H5Dwrite_chunk`` (h5py's ``write_direct_chunk``), which only copies the bytes. What is
stored is what HDF5's filter pipeline would have stored: byte for byte for bitshuffle-LZ4
(the chunk is made by the filter plugin's own ``bshuf_compress_lz4``, which hdf5plugin has
already loaded), and the same zlib stream format after the same byte shuffle for gzip. Any
other filter pipeline (other filters, Fletcher-32, ...) keeps HDF5's own path.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hdf5plugin
import numpy as np

from sync_primitives import AsyncResult, Lock, Queue, Thread

_log = logging.getLogger(__name__)

#: Filter identifiers of HDF5's pipeline.
_DEFLATE, _SHUFFLE, _BITSHUFFLE = 1, 2, 32008
#: cd_values[4] of the bitshuffle filter that asks for LZ4.
_BSHUF_LZ4 = 2


class ChunkCodec:
    """Makes the stored bytes of one whole chunk from its points (a C-contiguous array of
    the chunk's shape and of the dataset's type ``dtype``), as the dataset's filter
    pipeline would."""

    dtype: np.dtype[Any]

    def compress(
        self, chunk: np.ndarray[Any, Any]
    ) -> bytes | np.ndarray[Any, Any]:  # pragma: no cover
        raise NotImplementedError


def _bitshuffle_library() -> Any:
    library = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so"))
    size_t = ctypes.c_size_t
    library.bshuf_compress_lz4.restype = ctypes.c_int64
    library.bshuf_compress_lz4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, size_t, size_t, size_t]
    library.bshuf_compress_lz4_bound.restype = size_t
    library.bshuf_compress_lz4_bound.argtypes = [size_t, size_t, size_t]
    library.bshuf_default_block_size.restype = size_t
    library.bshuf_default_block_size.argtypes = [size_t]
    return library


class BitshuffleLZ4(ChunkCodec):
    """The bitshuffle filter's LZ4 chunks: a 12-byte header (the chunk's size in bytes,
    big-endian 64 bits; the block size in bytes, big-endian 32 bits) and the blocks that
    ``bshuf_compress_lz4`` makes. ctypes releases the GIL for that call."""

    _library: Any = None
    _library_lock = Lock()

    def __init__(self, dtype: np.dtype[Any], block_size: int) -> None:
        with BitshuffleLZ4._library_lock:
            if BitshuffleLZ4._library is None:
                BitshuffleLZ4._library = _bitshuffle_library()
        self._lib = BitshuffleLZ4._library
        self.dtype = dtype
        self.block_size = block_size or self._lib.bshuf_default_block_size(dtype.itemsize)

    def compress(self, chunk: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        count, itemsize, block = chunk.size, self.dtype.itemsize, self.block_size
        out = np.empty(12 + self._lib.bshuf_compress_lz4_bound(count, itemsize, block), np.uint8)
        written = self._lib.bshuf_compress_lz4(
            chunk.ctypes.data, out.ctypes.data + 12, count, itemsize, block
        )
        if written < 0:
            raise RuntimeError(f"bitshuffle-LZ4 failed on a chunk of {chunk.nbytes} bytes")
        out[:12] = np.frombuffer(struct.pack(">QI", chunk.nbytes, block * itemsize), np.uint8)
        return out[: 12 + written]


@dataclass(frozen=True)
class ShuffledDeflate(ChunkCodec):
    """HDF5's shuffle filter (byte k of every item, then byte k+1, ...) then its deflate
    filter (a zlib stream at ``level``). zlib releases the GIL while it compresses."""

    dtype: np.dtype[Any]
    shuffle: bool
    level: int

    def compress(self, chunk: np.ndarray[Any, Any]) -> bytes:
        data: Any = chunk
        itemsize = self.dtype.itemsize
        if self.shuffle and itemsize > 1:
            data = chunk.view(np.uint8).reshape(-1, itemsize).T.copy()
        return zlib.compress(memoryview(data).cast("B"), self.level)


def codec_for(dcpl: Any, dtype: np.dtype[Any]) -> ChunkCodec | None:
    """The codec that makes the chunks of a dataset of type ``dtype`` (a numeric type)
    whose creation property list is ``dcpl``, or None when its pipeline is not one this
    module reproduces (no filter at all included: HDF5 then only copies, fast enough)."""
    if dtype.kind not in "biuf":
        return None
    filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    codes = [f[0] for f in filters]
    if codes == [_BITSHUFFLE]:
        values = filters[0][2]
        if len(values) < 5 or values[4] != _BSHUF_LZ4:
            return None
        try:
            return BitshuffleLZ4(dtype, values[3])
        except (OSError, AttributeError) as exc:  # another build of the plugin
            _log.warning("bitshuffle-LZ4 chunks are compressed by HDF5 alone: %s", exc)
            return None
    if codes in ([_SHUFFLE, _DEFLATE], [_DEFLATE]):
        level = filters[-1][2][0] if filters[-1][2] else 6
        return ShuffledDeflate(dtype, codes[0] == _SHUFFLE, level)
    return None


# -- the pool -----------------------------------------------------------------------------

_Job = tuple[Callable[[np.ndarray[Any, Any]], Any], np.ndarray[Any, Any], "AsyncResult[Any]"]


class CompressionPool:
    """Worker threads that compress chunks; one per core by default.

    The workers start with the first chunk given, and again in a child process after
    ``fork()`` (where the parent's have ended).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self._jobs: Queue[_Job | None] = Queue()
        self._threads: list[Thread] = []
        # Held while workers start, which yields to the caller's hub: a lock of our own,
        # so that another greenlet of that hub waits for it instead of blocking the hub.
        self._lock = Lock()
        self._names = itertools.count()

    def compress(
        self, codec: ChunkCodec, chunks: list[np.ndarray[Any, Any]]
    ) -> list[AsyncResult[bytes | np.ndarray[Any, Any]]]:
        """Starts compressing each chunk; the results are in the same order.

        Raises (from each result's ``get``): what the codec raised for that chunk.
        """
        self._ensure_workers()
        results: list[AsyncResult[Any]] = []
        for chunk in chunks:
            result: AsyncResult[Any] = AsyncResult()
            self._jobs.put((codec.compress, chunk, result))
            results.append(result)
        return results

    def close(self, timeout: float | None = None) -> None:
        """End the workers once the chunks given so far are compressed (the pool starts
        new ones if it is given chunks again).

        Raises:
            TimeoutError: a worker did not end within ``timeout`` seconds.
        """
        with self._lock:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._jobs.put(None)
        for thread in threads:
            thread.join(timeout)

    def _ensure_workers(self) -> None:
        if len(self._threads) == self.workers and all(t.is_alive() for t in self._threads):
            return
        with self._lock:
            alive = [t for t in self._threads if t.is_alive()]
            if len(alive) != len(self._threads):
                # After fork() (or a worker that died): a fresh queue, fresh workers.
                for _ in alive:
                    self._jobs.put(None)
                self._jobs = Queue()
                alive = []
            while len(alive) < self.workers:
                thread = Thread(target=self._work, name=f"compress-{next(self._names)}")
                thread.start()
                alive.append(thread)
            self._threads = alive

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            function, chunk, result = job
            try:
                value = function(chunk)
            except Exception as error:  # handed to the waiting consumer
                result.set(error)
            else:
                result.set(value)


_pool = CompressionPool()


def pool() -> CompressionPool:
    """The process's pool, used by every scan."""
    return _pool


def compress_chunks(
    codec: ChunkCodec, chunks: list[np.ndarray[Any, Any]]
) -> list[AsyncResult[Any]]:
    """Starts compressing ``chunks`` (whole chunks of a dataset that ``codec`` was made
    for) on the process's pool; the stored bytes of each come from its result's ``get``.

    Raises (from ``get``): what the codec raised for that chunk.
    """
    dtype = codec.dtype
    return _pool.compress(codec, [np.ascontiguousarray(c, dtype=dtype) for c in chunks])

"""Chunks compressed on several cores and written directly (nexus/chunk_compression.py),
and the chunk cache of scan files (nexus/hdf5.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import gevent
import h5py
import numpy as np
import pytest

from nexus_writer.nexus import files, hdf5
from nexus_writer.nexus.chunk_compression import (
    BitshuffleLZ4,
    ChunkCodec,
    CompressionPool,
    ShuffledDeflate,
    codec_for,
)
from nexus_writer.nexus.options import Compression
from sync_primitives import Thread
from tests.conftest import wait_until

COMPRESSED = [Compression.BITSHUFFLE_LZ4, Compression.GZIP]
POINT = (12, 10)
ROWS = 4  # rows per chunk


def _frames(count: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).poisson(50, (count, *POINT)).astype("<u2")


def _growing(group: h5py.Group, name: str, compression: Compression) -> hdf5.Appender:
    return hdf5.create_growing(
        group,
        name,
        point_shape=POINT,
        maxshape=(None, *POINT),
        chunks=(ROWS, *POINT),
        dtype=np.dtype("<u2"),
        fillvalue=0,
        options=compression.dataset_options(),
    )


def _scan_file(tmp_path: Path) -> tuple[Path, h5py.File]:
    path = tmp_path / "scan.h5"
    h5py.File(path, "w-", locking=False, libver=hdf5.FORMAT).close()
    return path, files.acquire(path)


@pytest.mark.parametrize("compression", COMPRESSED, ids=lambda c: c.value)
def test_every_dataset_of_a_kind_is_compressed_as_the_first(
    tmp_path: Path, compression: Compression
) -> None:
    """The datasets after the first of a kind copy its creation properties: they must
    keep its filter and parameters (bitshuffle's were mangled, and stored uncompressed)."""
    path, handle = _scan_file(tmp_path)
    frames = np.zeros((4 * ROWS, *POINT), "<u2")  # compresses to almost nothing
    try:
        for i in range(3):
            _growing(handle, f"x{i}", compression).write(0, frames)
        filters = [handle[f"x{i}"].id.get_create_plist().get_filter(0) for i in range(3)]
        assert filters[1] == filters[0] and filters[2] == filters[0]
        for i in range(3):
            assert handle[f"x{i}"].id.get_storage_size() < frames.nbytes / 10, i
    finally:
        files.release(path)


@pytest.mark.parametrize("compression", COMPRESSED, ids=lambda c: c.value)
def test_a_whole_chunk_is_stored_as_hdf5_stores_it(
    tmp_path: Path, compression: Compression
) -> None:
    """A chunk compressed here and one compressed by HDF5's filter read back the same;
    for bitshuffle-LZ4 (the filter's own code) they are the same bytes."""
    frames = _frames(ROWS)
    with h5py.File(tmp_path / "f.h5", "w", libver=hdf5.FORMAT) as handle:
        by_hdf5 = handle.create_dataset(
            "hdf5", data=frames, chunks=(ROWS, *POINT), **compression.dataset_options()
        )
        codec = codec_for(by_hdf5.id.get_create_plist(), frames.dtype)
        assert isinstance(
            codec, BitshuffleLZ4 if compression is Compression.BITSHUFFLE_LZ4 else ShuffledDeflate
        )
        ours = _growing(handle, "ours", compression)
        ours.write(0, frames)
        stored_by_hdf5 = bytes(by_hdf5.id.read_direct_chunk((0, 0, 0))[1])
        stored_by_us = bytes(ours.id.read_direct_chunk((0, 0, 0))[1])
        if compression is Compression.BITSHUFFLE_LZ4:
            assert stored_by_us == stored_by_hdf5
        assert stored_by_us == bytes(codec.compress(frames))  # written directly
        np.testing.assert_array_equal(handle["ours"][()], frames)


@pytest.mark.parametrize("compression", [*COMPRESSED, Compression.NONE], ids=lambda c: c.value)
def test_writes_across_chunk_boundaries_read_back(tmp_path: Path, compression: Compression) -> None:
    """Parts of chunks at either end of a write go through HDF5, whole chunks directly,
    also over a chunk that HDF5 holds in its cache with rows not yet flushed, and after a
    gap left at the fill value."""
    path, handle = _scan_file(tmp_path)
    frames = _frames(40, seed=1)
    expected = np.zeros_like(frames)
    writes = [(0, 3), (3, 2), (5, 11), (16, 4), (22, 1), (21, 1), (20, 1), (23, 9), (34, 6)]
    try:
        appender = _growing(handle, "x", compression)
        for first, count in writes:
            appender.write(first, frames[first : first + count])
            expected[first : first + count] = frames[first : first + count]
        # Rows 1-2 again (in the cache), then rows 0-7 whole over them.
        appender.write(1, frames[1:3] + 1)
        appender.write(0, frames[0:8])
        handle.flush()
        with h5py.File(path, "r", locking=False) as reader:
            np.testing.assert_array_equal(reader["x"][()], expected)
    finally:
        files.release(path)
    with h5py.File(path, "r", locking=False) as reader:
        np.testing.assert_array_equal(reader["x"][()], expected)


class _Meeting(ChunkCodec):
    """A codec whose calls wait until ``parties`` of them run at once."""

    def __init__(self, parties: int) -> None:
        self.dtype = np.dtype("<u2")
        self.barrier = threading.Barrier(parties, timeout=10)
        self.threads: set[int] = set()

    def compress(self, chunk: np.ndarray[Any, Any]) -> bytes:
        self.threads.add(threading.get_ident())
        self.barrier.wait()
        return chunk.tobytes()


def test_chunks_are_compressed_on_several_threads_at_once() -> None:
    pool = CompressionPool(workers=2)
    codec = _Meeting(2)
    try:
        results = pool.compress(codec, [_frames(1), _frames(1, seed=2)])
        assert [r.get(timeout=10) for r in results] == [
            _frames(1).tobytes(),
            _frames(1, 2).tobytes(),
        ]
        assert len(codec.threads) == 2 and threading.get_ident() not in codec.threads
    finally:
        pool.close(timeout=10)


class _Failing(ChunkCodec):
    dtype = np.dtype("<u2")

    def compress(self, chunk: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if chunk[0, 0, 0] == 7:
            raise RuntimeError("bad chunk")
        return BitshuffleLZ4(self.dtype, 0).compress(chunk)


def test_a_chunk_that_fails_to_compress_raises_after_the_chunks_before_it(tmp_path: Path) -> None:
    frames = np.zeros((3 * ROWS, *POINT), "<u2")
    frames[ROWS:] = 7  # the second chunk fails
    with h5py.File(tmp_path / "f.h5", "w", libver=hdf5.FORMAT) as handle:
        appender = _growing(handle, "x", Compression.BITSHUFFLE_LZ4)
        appender._codec = _Failing()
        with pytest.raises(RuntimeError, match="bad chunk"):
            appender.write(0, frames)
        assert handle["x"].id.get_chunk_info_by_coord((0, 0, 0)).size > 0
        np.testing.assert_array_equal(handle["x"][:ROWS], frames[:ROWS])


# The fork in a process with threads is the scenario (Python 3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_compresses_with_workers_of_its_own() -> None:
    """The parent's workers do not exist in a child made by fork()."""
    pool = CompressionPool(workers=2)
    codec = BitshuffleLZ4(np.dtype("<u2"), 0)
    frames = _frames(2)
    try:
        assert pool.compress(codec, [frames])[0].get(timeout=10) is not None
        pid = os.fork()
        if pid == 0:  # the child: any failure is its exit status
            try:
                got = [r.get(timeout=10) for r in pool.compress(codec, [frames, frames])]
                os._exit(0 if bytes(got[1]) == bytes(codec.compress(frames)) else 1)
            finally:
                os._exit(2)
        status: list[int] = []

        def ended() -> bool:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(code)
            return bool(done)

        wait_until(ended, "the child to end", timeout=20)
        assert os.waitstatus_to_exitcode(status[0]) == 0
    finally:
        pool.close(timeout=10)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_scan_file_keeps_no_more_than_a_chunk_per_dataset_in_memory(tmp_path: Path) -> None:
    """HDF5's default cache kept 1 MiB of written chunks per open dataset: 100 channels
    grew the process by 100 MiB and more as they were written."""
    path, handle = _scan_file(tmp_path)
    block = np.arange(1000.0)
    try:
        channels = [
            hdf5.create_growing(
                handle,
                f"c{i}",
                point_shape=(),
                maxshape=(None,),
                chunks=(4096,),
                dtype=np.dtype("<f8"),
                fillvalue=np.nan,
                options={},
            )
            for i in range(100)
        ]
        frames = _growing(handle, "frames", Compression.BITSHUFFLE_LZ4)
        assert frames.id.get_access_plist().get_chunk_cache()[1] == ROWS * 120 * 2
        before = _rss_mib()
        for batch in range(300):  # 240 MB
            for channel in channels:
                channel.write(batch * 1000, block)
            handle.flush()
        grown = _rss_mib() - before
        assert grown < 40, f"{grown:.0f} MiB"
    finally:
        files.release(path)


def test_greenlets_of_one_hub_start_the_pool_together() -> None:
    """Starting the workers yields to the hub: a second greenlet of that hub arriving
    meanwhile must wait for them, not block the hub (a service froze on its first two
    scans of frames)."""
    pool = CompressionPool(workers=2)
    codec = BitshuffleLZ4(np.dtype("<u2"), 0)
    frames = _frames(1)

    def four_greenlets() -> set[bytes]:
        greenlets = [
            gevent.spawn(lambda: [r.get() for r in pool.compress(codec, [frames])])
            for _ in range(4)
        ]
        gevent.joinall(greenlets, raise_error=True)
        return {bytes(g.value[0]) for g in greenlets}

    hub = Thread(target=four_greenlets)  # a hub of its own: the test's wait is bounded
    hub.start()
    try:
        assert hub.get(timeout=20) == {bytes(codec.compress(frames))}
    finally:
        pool.close(timeout=10)


def test_without_the_plugins_compressor_hdf5_compresses_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another build of hdf5plugin (a library elsewhere, or without the symbol): the
    chunks go through HDF5's filter, as before; nothing fails."""
    monkeypatch.setattr(BitshuffleLZ4, "_library", None)
    monkeypatch.setattr("hdf5plugin.PLUGIN_PATH", str(tmp_path))  # no libh5bshuf.so here
    frames = _frames(2 * ROWS)
    with h5py.File(tmp_path / "f.h5", "w", libver=hdf5.FORMAT) as handle:
        made = handle.create_dataset(
            "x", data=frames, chunks=(ROWS, *POINT), **Compression.BITSHUFFLE_LZ4.dataset_options()
        )
        assert codec_for(made.id.get_create_plist(), frames.dtype) is None
        np.testing.assert_array_equal(made[()], frames)

"""The NXentry of one scan, in the scan's own file: what goes where.

.. important::
   A :class:`ScanFile` belongs to the consumer greenlet of one scan writer; it is created,
   grown and finished there (one thread at a time).

Layout of scan N (``scan_000N``), every group with its NX_class::

    /                                 NXroot     creator, file_time, versions, @default
    scan_000N/                        NXentry    title, start_time, end_reason, end_time
                                                 (written last), @default
        instrument/                   NXinstrument
            <motor>/value             NXpositioner   per point, with units
            <counter>/data            NXdetector     per point (and mca, images)
            <image>/data              NXdetector     virtual dataset over detector files
            positioners_start/        NXcollection   every motor before the scan
            positioners_end/          NXcollection   ... and after it
        measurement/                  NXcollection   a link to every channel's data
        plot_<name>/                  NXdata         @signal, @axes (meshes: 2D image)
        comments/comment_NN           NXnote         one per user comment
        scan_parameters/              NXparameters   type, title, shape, npoints
        metadata/                     NXcollection   the user metadata, as published
        writer/                       NXcollection   status, messages, version
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gevent
import h5py
import numpy as np

import nexus_writer
from nexus_writer.green import in_greenlet
from nexus_writer.protocol import Channel, Positioner, Role, ScanDocument
from nexus_writer.protocol.reader import Points

from . import files, hdf5, master
from .datasets import FrameSource, GrowingDataset, write_frame_references
from .names import short_names, valid_name
from .options import MiB, WriterOptions
from .readings import Reading, write_readings

_CLASS_OF_ROLE = {Role.POSITIONER: "NXpositioner"}
_STRINGS = h5py.string_dtype()


class DiskFullError(OSError):
    """Writing a batch would leave its disk (nearly) full: the scan stops before HDF5 meets
    the full disk, with everything written so far intact."""


def _group(parent: h5py.Group, name: str, nx_class: str, **attrs: Any) -> h5py.Group:
    group = hdf5.create_group(parent, name, nx_class)
    if attrs:
        group.attrs.update(attrs)
    return group


def _text(group: h5py.Group, name: str, value: object) -> h5py.Dataset:
    """A text dataset (in place if it exists); a value that is not text (a publisher's
    mistake: a number for a time) is written as its JSON text."""
    if not isinstance(value, str):
        value = json.dumps(value, default=repr)
    if name in group:
        dataset: h5py.Dataset = group[name]
        dataset[()] = value  # in place: no unlinking, no new object
        return dataset
    return group.create_dataset(name, data=value, dtype=_STRINGS)


class ScanFile:
    """Creates, grows and finishes the entry of one scan."""

    def __init__(
        self,
        document: ScanDocument,
        options: WriterOptions,
        readings: Mapping[str, Mapping[str, Reading]] | None = None,
        guard: master.Guard | None = None,
    ) -> None:
        """``readings``: group name -> (source -> reading), stored under
        ``instrument/<group>`` (see readings.py); ``guard``: checked with the session's file
        locked, before each change of it (the writer's lease; see master.py).

        Raises:
        PathRefusedError: the file is not absolute, or outside the roots (links resolved).
        PermissionError: the file cannot be written there.
        master.ScanAlreadyWritten: this scan's entry is finished already.
        master.EntryExistsError: no entry name is left for it.
        OSError: the file cannot be created or opened.
        """
        self.document = document
        self.options = options
        self._readings = readings or {}
        #: The session's file: it links this scan's entry (see master.py).
        self.path: Path = options.check_path(document.file)
        # Where the scan files go, checked too: a link there must not lead out of the roots.
        options.check_path(str(master.scans_directory(self.path) / "scan.h5"))
        # This scan's own file, which holds the entry: opened with the session locked (see
        # master.claim_entry).
        claim, self.file = master.claim_entry(self.path, document, files.acquire, guard)
        self.entry_name, self.scan_path, renamed = claim.name, claim.path, claim.renamed
        #: Written again from its start: its earlier, unfinished entry is kept beside.
        self.resumed = claim.resumed
        self._open = True
        #: Set after an I/O error: HDF5's state for this file can no longer be trusted (a
        #: further write after ENOSPC can crash the process), so nothing more is written.
        self.broken = False
        try:
            options.check_opened(self.scan_path, self.file.id.get_vfd_handle())
        except BaseException:
            self.broken = True  # not ours to write: left as it is
            self.close()
            raise
        try:
            self._create()
            master.link_entry(self.path, self.entry_name, self.scan_path, guard)
        except BaseException:
            self.broken = True  # whatever failed, this file is not to be flushed again
            self.close()
            raise
        #: Why the entry is not called ``scan_000N`` (None when it is).
        self.renamed = renamed
        if renamed:
            self.add_message(renamed)

    # -- creation -------------------------------------------------------------------------

    def _create(self) -> None:
        doc = self.document
        #: What creation had to work around: metadata stored otherwise (``notes``, written
        #: to ``writer/messages``), channels that could not be made (``problems``: the
        #: scan writer reports them, and the scan ends FAULT).
        self.notes: list[str] = list(doc.problems)
        self.problems: list[str] = []
        entry = self.entry = _group(self.file, self.entry_name, "NXentry")
        _text(entry, "title", doc.title)
        if doc.start_time:
            _text(entry, "start_time", doc.start_time)
        self.instrument = _group(entry, "instrument", "NXinstrument")
        self.measurement = _group(entry, "measurement", "NXcollection")
        self.names = short_names((c.name for c in doc.channels), reserved=_RESERVED)
        self.datasets: dict[str, GrowingDataset] = {}
        self.frames: dict[str, list[FrameSource]] = {}
        #: frame channel -> points covered by refused references (the dataset's least length)
        self.frame_points: dict[str, int] = defaultdict(int)
        #: Channels that have no place in the file, and why (their points are dropped).
        self.skipped: dict[str, str] = {}
        limit = self.options.max_channels
        for channel in doc.channels[:limit]:
            self._create_channel(channel)
        for channel in doc.channels[limit:]:
            self.skipped[channel.name] = "over the limit of channels"
        if len(doc.channels) > limit:
            self.problems.append(
                f"{len(doc.channels) - limit} channels beyond the first {limit:,} "
                "(--max-channels) are not written"
            )
        self._positioners("positioners_start", doc.positioners_start)
        for name, group_readings in self._readings.items():
            readings_group = _group(self.instrument, valid_name(name), "NXcollection")
            self.notes.extend(write_readings(readings_group, group_readings))
        self._create_plots()
        self._set_default_plot()
        parameters = _group(entry, "scan_parameters", "NXparameters")
        _text(parameters, "type", doc.type)
        _text(parameters, "title", doc.title)
        parameters["shape"] = np.array(doc.shape, dtype="<i8")
        if doc.npoints is not None:
            parameters["npoints"] = doc.npoints
        self._metadata(_group(entry, "metadata", "NXcollection"), doc.user)
        # Comments come from the events stream, which a new reader reads from its start.
        self.comments = _group(entry, "comments", "NXcollection")
        self.writer = _group(entry, "writer", "NXcollection")
        _text(self.writer, "version", nexus_writer.__version__)
        _text(self.writer, "scan_key", doc.key)
        _text(self.writer, "status", "RUNNING")
        self.writer.create_dataset("messages", shape=(0,), maxshape=(None,), dtype=_STRINGS)
        for note in self.notes:
            self.add_message(note)
        self.file.attrs["default"] = self.entry_name
        self.file.flush()  # before the master links it

    def _metadata(self, group: h5py.Group, user: dict[str, Any]) -> None:
        """The user metadata, one HDF5 object per item; more than ``max_metadata_items``
        (HDF5 makes about 10,000 objects a second) go as one JSON text instead, so that
        one scan's metadata cannot hold up the other scans of the consumer thread for
        long. Between items the other scans get their turn every few milliseconds."""
        limit = self.options.max_metadata_items
        items, depth = _count_items(user, limit)
        if items > limit or depth > MAX_DEPTH:
            why = (
                f"more than {limit:,} items (--max-metadata-items)"
                if items > limit
                else f"nested more than {MAX_DEPTH} levels deep"
            )
            try:
                text = json.dumps(user, default=repr)
            except RecursionError:
                self.notes.append(f"metadata: {why}, and too deep for JSON: not stored")
                return
            self.notes.append(f"metadata: {why}: stored as its JSON text in metadata/json")
            group.create_dataset("json", data=text, dtype=_STRINGS)
            return
        _write_mapping(group, user, self.notes, "metadata")

    def _create_channel(self, channel: Channel) -> None:
        """The channel's group, dataset and measurement link; a channel that cannot have
        them (a point larger than the limit, a shape HDF5 refuses) is skipped, with the
        problem recorded, and the others are made."""
        limit = self.options.max_point_bytes
        if channel.fixed_data and channel.point_nbytes > limit:
            self._skip(
                channel,
                f"a point of {channel.point_nbytes:,} bytes is over the "
                f"limit of {limit:,} (--max-point-bytes)",
            )
            return
        try:
            self._make_channel(channel)
        except (ValueError, TypeError, OverflowError) as exc:
            self._skip(channel, f"HDF5 refuses its dataset: {exc}")

    def _skip(self, channel: Channel, why: str) -> None:
        self.skipped[channel.name] = why
        self.problems.append(f"channel {channel.name!r} is not written: {why}")

    def _make_channel(self, channel: Channel) -> None:
        name = self.names[channel.name]
        group = _group(self.instrument, name, _CLASS_OF_ROLE.get(channel.role, "NXdetector"))
        field = "value" if channel.role is Role.POSITIONER else "data"
        if channel.role is Role.FRAME_REF:
            self.frames[channel.name] = []
            write_frame_references(group, field, channel, [], str(self.scan_path))
        else:
            self.datasets[channel.name] = GrowingDataset(
                group, field, channel, self.options, self.document.npoints
            )
        hdf5.soft_link(self.measurement, name, f"{group.name}/{field}")

    def _link(self, channel_name: str) -> str:
        """Where a plot's link to a channel points: at the data itself, never at another
        link (nexusformat, hence nxcheck, can take minutes over chains of soft links in a
        file reached through an external link)."""
        name = self.names[channel_name]
        field = "value" if self.document.channel(channel_name).role is Role.POSITIONER else "data"
        return f"{self.instrument.name}/{name}/{field}"

    def _written(self, channel: str) -> bool:
        return channel in self.names and channel not in self.skipped

    def _create_plots(self) -> None:
        """NXdata groups of the document's plots with at most one axis (a mesh's 2D image
        is made at the end, when its shape is known)."""
        for plot in self.document.plots:
            known = [s for s in plot.signals if self._written(s)]
            axes = [a for a in plot.axes if self._written(a)]
            if not known or len(axes) > 1 or len(axes) != len(plot.axes):
                continue
            name = _plot_name(plot.name)
            if name in self.entry:
                continue
            data = _group(self.entry, name, "NXdata", signal=self.names[known[0]])
            for channel in known + axes:
                data[self.names[channel]] = h5py.SoftLink(self._link(channel))
            if len(known) > 1:
                data.attrs["auxiliary_signals"] = [self.names[s] for s in known[1:]]
            if axes:
                data.attrs["axes"] = [self.names[axes[0]]]

    def _set_default_plot(self) -> None:
        """The entry's default: the first of the document's plots that exists."""
        for plot in self.document.plots:
            if _plot_name(plot.name) in self.entry:
                self.entry.attrs["default"] = _plot_name(plot.name)
                return

    def _positioners(self, name: str, snapshot: dict[str, Positioner]) -> None:
        group = _group(self.instrument, name, "NXcollection")
        for motor, position in snapshot.items():
            value = position.value
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.notes.append(f"{name}/{motor}: {value!r:.80} is not a number: stored as text")
            dataset = _store(group, motor, value, self.notes, name)
            if position.unit:
                dataset.attrs["units"] = position.unit

    # -- growth ---------------------------------------------------------------------------

    def reserve(self, nbytes: int) -> None:
        """Check that ``nbytes`` more can be written while keeping the margin free.

        Raises:
            DiskFullError: the disk is (nearly) full; nothing has been written.
        """
        # HDF5 allocates whole chunks when it flushes: one more than the bytes themselves.
        needed = nbytes + self.options.chunk_bytes + self.options.min_free_bytes
        free = shutil.disk_usage(self.scan_path.parent).free
        if free < 4 * needed:
            # Getting close: HDF5 still holds written chunks in its cache. Flush them so
            # that the free space counts them (never needed while space is plentiful).
            self.file.flush()
            free = shutil.disk_usage(self.scan_path.parent).free
        if free < needed:
            raise DiskFullError(
                errno.ENOSPC,
                f"disk nearly full: {free / MiB:.1f} MiB free for {self.scan_path}, "
                f"{needed / MiB:.1f} MiB needed to write {nbytes / MiB:.2f} MiB more with a "
                f"margin; the scan stops here, with the data written so far",
            )

    def write_points(
        self,
        channel: str,
        runs: list[tuple[int, Points]],
    ) -> None:
        """Runs of points of ``channel``, each ``(first, points)``, in this order."""
        if channel in self.skipped:
            return  # reported once, when the entry was made
        self.datasets[channel].write(runs)

    def add_frames(
        self,
        channel: str,
        sources: list[FrameSource],
        refused: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Reference more frames of detector files (the virtual dataset is remade), and
        record the ``refused`` runs of points, each ``(first, count)``, as missing (their
        file may not be referred to): they read as the fill value, as a gap does.

        A reference that continues the previous one (same file and dataset, next frames,
        next points) extends it: the virtual dataset keeps about one mapping per detector
        file, however many batches referenced it.
        """
        if channel in self.skipped:
            return  # reported once, when the entry was made
        for first, count in refused:
            self.add_missing(channel, first, count, "refused")
            self.frame_points[channel] = max(self.frame_points[channel], first + count)
        known = self.frames[channel]
        for source in sources:
            last = known[-1] if known else None
            if (
                last is not None
                and (last.file, last.dataset) == (source.file, source.dataset)
                and last.first + last.count == source.first
                and last.frame + last.count == source.frame
            ):
                known[-1] = dataclasses.replace(last, count=last.count + source.count)
            else:
                known.append(source)
        group = self.instrument[self.names[channel]]
        info = self.document.channel(channel)
        write_frame_references(
            group, "data", info, known, str(self.scan_path), points=self.frame_points[channel]
        )

    def comment(self, stamp: str, text: str) -> None:
        note = _group(self.comments, f"comment_{len(self.comments) + 1:02d}", "NXnote")
        _text(note, "type", "text/plain")
        _text(note, "date", stamp)
        _text(note, "data", text)

    def started(self, start_time: str) -> None:
        _text(self.entry, "start_time", start_time)

    def add_missing(self, channel: str, first: int, count: int, why: str) -> None:
        """Record points of ``channel`` that never arrived (they read as the fill value):
        ``missing_points`` rows of (first, count) and ``missing_reasons`` beside the data."""
        if channel in self.skipped or channel not in self.names:
            return
        group = self.instrument[self.names[channel]]
        if "missing_points" not in group:
            group.create_dataset("missing_points", shape=(0, 2), maxshape=(None, 2), dtype="<i8")
            group.create_dataset("missing_reasons", shape=(0,), maxshape=(None,), dtype=_STRINGS)
        points, reasons = group["missing_points"], group["missing_reasons"]
        row = points.shape[0]
        points.resize(row + 1, axis=0)
        reasons.resize(row + 1, axis=0)
        points[row] = (first, count)
        reasons[row] = why

    def add_message(self, message: str) -> None:
        """Record a problem in ``writer/messages`` (it stays in the file)."""
        messages = self.writer["messages"]
        messages.resize(messages.shape[0] + 1, axis=0)
        messages[-1] = message

    def flush(self) -> None:
        self.file.flush()

    # -- the end --------------------------------------------------------------------------

    def finish(
        self,
        document: ScanDocument,
        status: str,
        end_reason: str | None,
        message: str | None,
        end_time: str,
    ) -> None:
        """Write what is only known at the end; ``end_time`` goes last. A part that the
        document's values make impossible (a plot HDF5 refuses, a snapshot of another
        type) is left out with a message: the status and ``end_time`` are always
        written, and so is every point (I/O errors still raise)."""
        self.document = document
        written = len(self.notes)
        parts: list[tuple[str, Callable[[], None]]] = [
            ("positioners_end", self._positioners_end),
            ("the mesh plots", self._create_mesh_plots),
            ("the default plot", self._set_default_plot),
        ]
        for part, make in parts:
            try:
                make()
            except RecursionError as exc:
                self.notes.append(f"{part} not written: {exc}")
            except (OSError, RuntimeError):
                raise  # I/O
            except Exception as exc:
                self.notes.append(f"{part} not written: {exc}")
        for note in self.notes[written:]:
            self.add_message(note)
        if end_reason is not None:  # None: the scan had not ended (a STOPPED entry)
            _text(self.entry, "end_reason", str(end_reason))
        if message:
            _text(self.entry, "end_message", str(message))
        # Everything else reaches the file first: a process killed during the last
        # flush can leave the status and end_time visible while objects written just
        # before them lie beyond the end of the file that its superblock records (the
        # crash matrix met it: "addr overflow"), and master._finished would take the
        # scan for written. After this flush, only these two can be damaged.
        self.file.flush()
        _text(self.writer, "status", status)
        _text(self.entry, "end_time", str(end_time))
        self.file.flush()

    def _positioners_end(self) -> None:
        self._positioners("positioners_end", self.document.positioners_end)

    def _create_mesh_plots(self) -> None:
        """A 2D NXdata per plot with two axes: the signal's points as an image of
        (slow, fast), by a virtual dataset over its complete rows."""
        shape = self.document.shape
        for plot in self.document.plots:
            if (
                len(plot.axes) != 2
                or len(shape) != 2
                or not all(c in self.datasets for c in (*plot.signals[:1], *plot.axes))
            ):
                continue
            fast_n, slow_n = shape
            signal = self.datasets[plot.signals[0]].dataset
            rows = min(signal.shape[0], *(self.datasets[a].length for a in plot.axes)) // fast_n
            rows = min(rows, slow_n)  # complete rows of the declared mesh, never more
            if rows == 0:
                continue
            name = _plot_name(plot.name)
            if name in self.entry:
                continue
            data = _group(self.entry, name, "NXdata")
            signal_name = self.names[plot.signals[0]]
            layout = h5py.VirtualLayout(shape=(rows, fast_n), dtype=signal.dtype)
            # "." is this very file: the view survives the file being moved or renamed.
            source = h5py.VirtualSource(".", signal.name, shape=signal.shape, dtype=signal.dtype)
            for row in range(rows):
                layout[row] = source[row * fast_n : (row + 1) * fast_n]
            data.create_virtual_dataset(signal_name, layout, fillvalue=np.nan)
            fast, slow = plot.axes
            fast_values = self.datasets[fast].dataset[:fast_n]
            slow_values = self.datasets[slow].dataset[: rows * fast_n : fast_n]
            for axis, values in ((fast, fast_values), (slow, slow_values)):
                dataset = data.create_dataset(self.names[axis], data=values)
                if self.document.channel(axis).unit:
                    dataset.attrs["units"] = self.document.channel(axis).unit
            data.attrs.update(signal=signal_name, axes=[self.names[slow], self.names[fast]])

    def close(self) -> None:
        """Release the file (closed when no other scan writes to it); idempotent.

        A broken file is abandoned instead: closing it after an I/O error can crash HDF5.
        """
        if self._open:
            self._open = False
            if self.broken:
                files.abandon(self.scan_path)
            else:
                files.release(self.scan_path)


#: Names the layout gives groups of ``instrument/``: a channel never takes them.
_RESERVED = frozenset({"positioners_start", "positioners_end"})


def _write_mapping(
    group: h5py.Group, mapping: dict[str, Any], notes: list[str], where: str
) -> None:
    """User metadata: nested mappings become groups, strings and numbers datasets, and
    anything else (or a number HDF5 cannot hold) its JSON text. Two keys with one NeXus
    name (``a-b``, ``a_b``) both get a place (``a_b``, ``a_b_2``). What is stored
    otherwise than as itself is said in ``notes``."""
    for key, value in mapping.items():
        _take_turns()
        if isinstance(value, dict):
            name = _free_name(group, str(key), notes, where)
            _write_mapping(_group(group, name, "NXcollection"), value, notes, f"{where}/{name}")
        else:
            _store(group, str(key), value, notes, where)


#: User metadata nested deeper is stored as one JSON text (groups in groups...).
MAX_DEPTH = 32


def _count_items(mapping: dict[str, Any], limit: int) -> tuple[int, int]:
    """Items of a nested mapping, counted up to just past ``limit``, and how deep it is
    (up to just past MAX_DEPTH; no recursion)."""
    count, depth, stack = 0, 0, [(mapping, 1)]
    while stack and count <= limit and depth <= MAX_DEPTH:
        current, level = stack.pop()
        count += len(current)
        depth = max(depth, level)
        stack.extend((v, level + 1) for v in current.values() if isinstance(v, dict))
    return count, depth


#: Seconds of creation work after which the other greenlets of the thread get a turn.
TURN = 0.005
_turn_started = [0.0]


def _take_turns() -> None:
    """Let the other scans of this consumer thread run if this one has worked for TURN
    seconds (a yield to the thread's hub; nothing in a thread without one)."""
    now = time.monotonic()
    if now - _turn_started[0] < TURN:
        return
    if in_greenlet():
        gevent.sleep(0)
    _turn_started[0] = time.monotonic()


def _store(group: h5py.Group, key: str, value: Any, notes: list[str], where: str) -> h5py.Dataset:
    """One value under a free NeXus name made from ``key``: text as text, a number as a
    number if HDF5 can hold it, anything else as its JSON text (with a note)."""
    name = _free_name(group, key, notes, where)
    if isinstance(value, bool | int | float):
        try:
            return group.create_dataset(name, data=value)
        except (OverflowError, TypeError, ValueError):
            notes.append(
                f"{where}/{name}: {value!r:.80} cannot be stored as a number: stored as text"
            )
    return _text(group, name, value)  # the name is free: a new dataset


def _free_name(group: h5py.Group, key: str, notes: list[str], where: str) -> str:
    name = valid_name(key)
    if name not in group:
        return name
    occurrence = 2
    while f"{name}_{occurrence}" in group:
        occurrence += 1
    renamed = f"{name}_{occurrence}"
    notes.append(f"{where}: {key!r} is stored as {renamed!r} ({name!r} was taken)")
    return renamed


def _plot_name(name: str) -> str:
    return f"plot_{valid_name(name.rsplit(':', 1)[-1])}"

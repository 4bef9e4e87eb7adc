"""NexusScanWriter: one scan from Redis into its NXentry.

.. important::
   The listener (a :class:`~nexus_writer.protocol.ScanReader`) runs in the start hub; the
   consumer, which owns the :class:`~nexus_writer.nexus.ScanFile`, runs in the consumer
   thread in parallel mode (see :mod:`nexus_writer.subscriber`). The two share only the
   queue of event batches.

What it guarantees: every point that is read is written, in the batch it arrived with (one
resize and one write per channel and batch), and flushed before the next batch is taken, so
another process reading the file sees it within a batch's time. A bad entry or lost points
of one channel are recorded in ``writer/messages`` and make the scan FAULT, while the other
channels go on. Redis going away is waited out (the reader resumes from its cursor); a
publisher that goes silent without closing the scan gets it closed after the inactivity
time-out, with the reason in the file.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import redis

from nexus_writer.lease import SessionLease
from nexus_writer.nexus.datasets import FrameSource, PointTooLargeError
from nexus_writer.nexus.master import EntryExistsError, ScanAlreadyWritten
from nexus_writer.nexus.options import PathRefusedError, WriterOptions
from nexus_writer.nexus.readings import Reading
from nexus_writer.nexus.scan_file import DiskFullError, ScanFile
from nexus_writer.protocol import (
    ChannelEndEvent,
    CommentEvent,
    DataLostError,
    EndReason,
    ErrorEvent,
    FrameRefsEvent,
    GapError,
    LeaseLost,
    PointsEvent,
    ScanDocument,
    ScanReader,
    ScanState,
    StateEvent,
)
from nexus_writer.protocol.mux import Feed, MuxFailedError, StreamMux
from nexus_writer.protocol.reader import JOIN_LIMIT, Points
from sync_primitives import Thread

from .subscriber import Mode, State, Subscriber

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opened:
    """The listener's first event: the scan's document."""

    document: ScanDocument


@dataclass(frozen=True)
class DocumentChanged:
    document: ScanDocument


@dataclass(frozen=True)
class Abandoned:
    """The listener gave up on an unclosed scan."""

    reason: str


class NexusScanWriter(Subscriber):
    """Writes the scan stored at ``key`` to the file its document names."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        options: WriterOptions | None = None,
        *,
        mode: Mode = Mode.PARALLEL,
        consumer_thread: Thread | None = None,
        on_finish: Callable[[Subscriber], None] | None = None,
        lease: SessionLease | None = None,
        readings: Callable[[], Mapping[str, Mapping[str, Reading]]] | None = None,
        mux: StreamMux | None = None,
    ) -> None:
        """``readings``: called (in the consumer) as the entry is made, for the values to
        store in it (see nexus/readings.py); it must not block.

        ``mux``: the stream mux (of the start hub) that reads the scan's streams while it
        is open, shared with other scans; by default the writer makes one of its own.

        ``lease``: write only while it is held (checked before every write, and in
        Redis before the session's file is changed); once it is lost, nothing more is
        written: the file is left for the lease's new holder, which writes the scan again."""
        super().__init__(key, mode, consumer_thread, on_finish)
        self._lease = lease
        self._readings = readings
        self._lease_lost: str | None = None
        self._unfinished: str | None = None
        #: The URL of its entry if that was finished before: nothing to do.
        self._written_before: str | None = None
        self.client = client
        self.key = key
        self.options = options or WriterOptions()
        # listener side
        self._reader: ScanReader | None = None
        self._mux = mux
        self._own_mux = False
        self._feed: Feed | None = None
        self._source_done = False
        self._last_activity = time.monotonic()
        self._retry_delay = 0.1
        # consumer side
        self._file: ScanFile | None = None
        self._problems_in_file = 0  # problems written to writer/messages as they came
        self._document: ScanDocument | None = None
        self._closed: StateEvent | None = None
        self._abandoned: str | None = None
        self._written: dict[str, int] = defaultdict(int)
        #: The scan's end reason as written in its entry (SUCCESS, USER_ABORT, FAILURE...)
        self.end_reason: str | None = None

    @property
    def file(self) -> str | None:
        """The file being written, once the scan's document is known."""
        return self._document.file if self._document else None

    def progress(self) -> tuple[int, int | None]:
        """Points written so far (the most of any channel) and the points announced (None
        if unknown); read from any thread."""
        written = max(list(self._written.values()), default=0)
        document = self._document
        return written, document.npoints if document is not None else None

    @property
    def url(self) -> str | None:
        """``<scan file>::/<entry>``, once the entry exists (read from any thread)."""
        scan_file = self._file
        if scan_file is None:
            return self._written_before  # its entry, if it was finished before
        return f"{scan_file.path}::/{scan_file.entry_name}"

    @property
    def written_before(self) -> bool:
        """Whether the scan's entry was finished before this writer started (announced
        again, or written by an earlier service): it had nothing to do."""
        return self._written_before is not None

    # -- listener ---------------------------------------------------------------------------

    def listen(self, timeout: float) -> list[object]:
        """What arrived for the scan. While the scan is open, its streams are read by the
        stream mux and the listener waits for its feed, or a stop, up to the inactivity
        time-out (``timeout`` is not used: nothing polls); once it is CLOSED, the rest is
        read directly, without waiting."""
        try:
            events: list[object] = []
            if self._reader is None:
                self._reader = ScanReader(self.client, self.key)
                events.append(Opened(self._reader.document))
            reader = self._reader
            document = reader.document
            if reader.state is not ScanState.CLOSED:
                events.extend(self._from_mux(reader, bool(events)))
            elif self._feed is not None and self._mux is not None:
                # Leaves the mux; what it read meanwhile is taken before reading on.
                self._mux.unfollow(self._feed)
                events.extend(self._feed.take())
                self._feed = None
            else:
                events.extend(reader.read(None))
            if reader.document is not document:
                events.append(DocumentChanged(reader.document))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._wait_for_redis(exc)
            return []
        self._retry_delay = 0.1
        now = time.monotonic()
        if self._mux is not None:  # Redis being away is not the publisher's silence
            self._last_activity = max(self._last_activity, self._mux.outage)
        if events:
            self._last_activity = now
        elif now - self._last_activity > self.options.inactivity_timeout:
            self._source_done = True
            return [
                Abandoned(
                    f"nothing was published for {self.options.inactivity_timeout:g} s and the "
                    "scan was not closed (publisher gone?): closed by the writer"
                )
            ]
        self._source_done = reader.done
        return events

    def _from_mux(self, reader: ScanReader, have_events: bool) -> list[object]:
        """The events the stream mux read for the scan, waiting for some (or a stop, or
        the inactivity time-out) unless ``have_events``."""
        if self._mux is None:
            self._mux = StreamMux(self.client, retry_max_delay=self.options.retry_max_delay)
            self._own_mux = True
        try:
            if self._feed is None:
                self._feed = self._mux.follow(reader, self._wake)
            self._wake.clear()  # before taking: entries that come after it set it again
            events = self._feed.take()
            if not events and not have_events and not self._stop_requested.is_set():
                silent = time.monotonic() - max(self._last_activity, self._mux.outage)
                self._wake.wait(max(0.0, self.options.inactivity_timeout - silent) + 0.01)
                events = self._feed.take()
        except MuxFailedError as exc:
            # Not the scan's fault (an ACL, say): it stays to be written again.
            self._unfinished = str(exc)
            raise
        return events

    def listener_ended(self) -> None:
        if self._mux is not None and self._feed is not None:
            self._mux.unfollow(self._feed)
        if self._own_mux and self._mux is not None:
            self._mux.close()

    def _wait_for_redis(self, exc: Exception) -> None:
        _log.warning(
            "scan %s: Redis unreachable (%s); retrying in %.1f s", self.key, exc, self._retry_delay
        )
        self._stop_requested.wait(self._retry_delay)  # a pause that ends early on stop()
        self._retry_delay = min(2 * self._retry_delay, self.options.retry_max_delay)
        self._last_activity = time.monotonic()  # Redis being away is not the publisher's silence

    def listen_finished(self) -> bool:
        return self._source_done

    def publication_time(self, events: list[object]) -> float | None:
        """The oldest entry's time in its stream id (milliseconds since the epoch)."""
        oldest: int | None = None
        for event in events:
            if isinstance(event, PointsEvent):
                stream_id = event.first_stream_id or event.stream_id
            elif isinstance(event, FrameRefsEvent):
                stream_id = event.stream_id
            else:
                continue
            millis = int(stream_id.partition("-")[0])
            if oldest is None or millis < oldest:
                oldest = millis
        return None if oldest is None else oldest / 1000.0

    # -- consumer ---------------------------------------------------------------------------

    @property
    def unfinished(self) -> str | None:
        """Why the scan must be written again (from its start, from Redis, by the next
        service that takes the session), once the writer has ended; None if it is done
        with for good (written, or failed for a reason that writing again cannot mend)."""
        return self._unfinished

    def consume(self, events: list[object]) -> None:
        try:
            self._consume(events)
        except DiskFullError as exc:
            self._unfinished = str(exc)  # refused before writing: the file is sound
            raise
        except LeaseLost as exc:
            # Another service writes this session now: not one byte more from here.
            self._lease_lost = self._unfinished = str(exc)
            if self._file is not None:
                self._file.broken = True
            raise
        except (PathRefusedError, EntryExistsError, RecursionError):
            raise  # the publisher's path, numbering or nesting: writing again cannot help
        except (OSError, RuntimeError) as exc:
            # What HDF5 raises when writing or flushing fails (OSError, but also the
            # RuntimeError of a failed flush, e.g. past a file size limit) leaves the file
            # in a state nothing may touch again: it is abandoned, never flushed or closed.
            # The same for a file that could not be made (a disk or mount gone): the scan
            # is written again once the disk is mended and a service takes the session.
            self._unfinished = f"I/O error: {exc}"
            if self._file is not None:
                self._file.broken = True
            raise
        # Anything else (a value HDF5 refuses, a bug) is no I/O failure: the file is sound,
        # and the scan ends FAULT with its end written.

    def _consume(self, events: list[object]) -> None:
        points: dict[str, list[PointsEvent]] = defaultdict(list)
        frames: dict[str, list[FrameSource]] = defaultdict(list)
        refused: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (first, count)
        ends: list[ChannelEndEvent] = []  # checked once this batch's points are written
        for event in events:
            if isinstance(event, ChannelEndEvent):
                ends.append(event)
            elif isinstance(event, PointsEvent):
                points[event.channel.name].append(event)
            elif isinstance(event, FrameRefsEvent):
                source = self._frame_source(event, refused[event.channel.name])
                if source is not None:
                    frames[event.channel.name].append(source)
            else:
                self._consume_other(event)
        if self._file is not None:
            self._write_batch(self._file, points, frames, refused, ends)

    def _write_batch(
        self,
        file: ScanFile,
        points: dict[str, list[PointsEvent]],
        frames: dict[str, list[FrameSource]],
        refused: dict[str, list[tuple[int, int]]],
        ends: list[ChannelEndEvent],
    ) -> None:
        """One batch into the file: each channel's runs of points, its frame references
        (and the runs of frames refused, recorded as missing), the channels that ended
        checked against what was written, then a flush.

        The free space is checked for up to ``write_bytes`` of the batch at a time (not
        per channel: a statvfs per channel and batch costs more than the write itself
        when a scan has thousands of channels)."""
        remaining = sum(_nbytes(p.data) for parts in points.values() for p in parts)
        credit = 0  # bytes checked for and not yet written
        limit = self.options.write_bytes
        for channel, parts in points.items():
            pieces = [
                piece
                for first, data in self._within_limit(channel, _contiguous(parts))
                for piece in _slices(first, data, limit)
            ]
            for bundle in _bundles(pieces, limit):
                nbytes = sum(_nbytes(data) for _, data in bundle)
                if nbytes > credit:
                    credit = max(nbytes, min(remaining, limit))
                    file.reserve(credit)
                credit -= nbytes
                remaining -= nbytes
                self._fence()
                try:
                    file.write_points(channel, bundle)
                except PointTooLargeError as exc:
                    self._problem(str(exc))  # names the points refused
                end = max(start + len(data) for start, data in bundle)
                self._written[channel] = max(self._written[channel], end)
        for channel in frames.keys() | {c for c, runs in refused.items() if runs}:
            sources, missing = frames.get(channel, []), refused.get(channel, [])
            self._fence()
            file.add_frames(channel, sources, missing)
            runs = [*missing, *((s.first, s.count) for s in sources)]
            end = max(first + count for first, count in runs)
            self._written[channel] = max(self._written[channel], end)
        for ended in ends:
            written = self._written[ended.channel.name]
            if ended.total != written:
                self._problem(
                    f"channel {ended.channel.name!r}: {ended.total} points published, "
                    f"{written} written"
                )
        self._fence()
        file.flush()

    def _within_limit(
        self,
        channel: str,
        runs: list[tuple[int, Points]],
    ) -> list[tuple[int, Points]]:
        """The runs of points whose indices stay below the limit (the others recorded)."""
        return [(f, d) for f, d in runs if not self._over_max_points(channel, f, len(d))]

    def _over_max_points(self, channel: str, first: int, count: int, where: str = "") -> bool:
        """True, after recording the problem, if points ``first`` .. ``first + count - 1``
        reach ``max_points`` (an index of 2**62 must not make a dataset of 2**62 rows)."""
        limit = self.options.max_points
        if first + count <= limit:
            return False
        self._problem(
            f"channel {channel!r}{where}: points {first}..{first + count - 1} are beyond the "
            f"limit of {limit:,} points per channel (--max-points): not written"
        )
        return True

    def _frame_source(
        self, event: FrameRefsEvent, refused: list[tuple[int, int]]
    ) -> FrameSource | None:
        """The frames an entry refers to, if their file may be referred to (absolute, below
        a root); None after recording the problem, and ``(first, count)`` in ``refused``
        if the file may not be referred to (those points are missing)."""
        ref = event.ref
        where = f", entry {event.stream_id}"
        if self._over_max_points(event.channel.name, event.first, event.count, where):
            return None
        try:
            file = self.options.check_source(ref.file)
        except PathRefusedError as exc:
            self._problem(
                f"channel {event.channel.name!r}, entry {event.stream_id}: {exc}: frames "
                f"{event.first}..{event.first + event.count - 1} not referred to"
            )
            refused.append((event.first, event.count))
            return None
        return FrameSource(event.first, event.count, file, ref.dataset, ref.frame)

    def _fence(self) -> None:
        """Before each HDF5 call that writes: a process frozen (SIGSTOP, swapping) while
        it wrote finishes at most the one call under way when it wakes up, into the file
        the lease's new holder has moved aside.

        Raises:
            LeaseLost: another service writes the session now.
        """
        if self._lease is not None:
            self._lease.fence()

    def _consume_other(self, event: object) -> None:
        if isinstance(event, Opened):
            self._open_file(event.document)
            return
        if self._file is None:
            return
        if isinstance(event, DocumentChanged):
            self._document = event.document
            if event.document.start_time:
                self._file.started(event.document.start_time)
        elif isinstance(event, StateEvent) and event.state is ScanState.CLOSED:
            self._closed = event
        elif isinstance(event, CommentEvent):
            self._file.comment(event.time, event.text)
        elif isinstance(event, ErrorEvent):
            self._problem(str(event.error))
            error = event.error
            if isinstance(error, DataLostError | GapError):
                why = "trimmed" if isinstance(error, DataLostError) else "never published"
                self._file.add_missing(error.channel, error.first, error.count, why)
        elif isinstance(event, Abandoned):
            self._abandoned = event.reason

    def _read(self) -> Mapping[str, Mapping[str, Reading]] | None:
        """The readings to store in the entry; none if the provider fails (a reading is
        never worth a scan)."""
        if self._readings is None:
            return None
        try:
            return self._readings()
        except Exception:
            _log.exception("scan %s: the readings could not be taken: none stored", self.key)
            return None

    def _open_file(self, document: ScanDocument) -> None:
        """Make the scan's entry (or learn that it is written already)."""
        self._document = document
        if self._lease is not None:
            self._lease.confirm()  # in Redis: the session's file is about to change
        try:
            self._file = ScanFile(document, self.options, self._read(), self._lease)
        except ScanAlreadyWritten as exc:
            _log.info("scan %s: nothing to do: %s", self.key, exc)
            self._written_before = exc.url
            return
        _log.info(
            "scan %s: writing %s in %s%s",
            self.key,
            self._file.entry_name,
            self._file.path,
            " again from its start: its entry was unfinished" if self._file.resumed else "",
        )
        if self._file.renamed:
            _log.warning("scan %s: %s", self.key, self._file.renamed)
        for note in self._file.notes:
            _log.warning("scan %s: %s", self.key, note)
        for problem in self._file.problems:
            self._problem(problem)

    def _problem(self, message: str) -> None:
        _log.error("scan %s: %s", self.key, message)
        self.degrade(message)
        if self._file is not None:
            self._file.add_message(message)
            self._problems_in_file += 1

    def finish(self, state: State, reason: str | None) -> None:
        if self._killed:  # whether its end was in or not, what it wrote may be partial
            self._unfinished = self._unfinished or (
                "killed before the scan closed"
                if self._closed is None
                else "killed before its end was written"
            )
        if self._file is None:
            if state is State.OFF and not self.written_before:
                self._unfinished = "the writer stopped before the scan's file was made"
            return
        if self._lease is not None and not self._file.broken:
            try:
                self._lease.fence()
            except LeaseLost as exc:
                self._lease_lost = self._unfinished = str(exc)
                self._file.broken = True
        if self._file.broken:
            self._leave_file(self._file)
            return
        try:
            self._write_end(self._file, state, reason)
        except RecursionError:
            raise  # not I/O: the file is sound (it is closed below)
        except (OSError, RuntimeError) as exc:
            self._unfinished = f"I/O error: {exc}"
            self._file.broken = True  # as in consume: never touched again
            raise
        finally:
            self._file.close()

    def _leave_file(self, file: ScanFile) -> None:
        """The file is not to be touched again: after an I/O error, or the lease lost."""
        if self._lease_lost is not None:
            _log.warning(
                "scan %s: %s is left as it is (%s): the service that holds the lease now "
                "writes the scan again",
                self.key,
                file.scan_path,
                self._lease_lost,
            )
        else:
            _log.error(
                "scan %s: %s is left as it was after the I/O error: the session's file and "
                "every other scan's file are untouched",
                self.key,
                file.scan_path,
            )
        file.close()

    def _write_end(self, file: ScanFile, state: State, reason: str | None) -> None:
        assert self._document is not None  # set with the file, by Opened
        document = self._document
        end_reason: str | None
        if self._closed is not None:
            end_reason = (self._closed.reason or EndReason.SUCCESS).value
            message = self._closed.message
        else:
            end_reason = EndReason.FAILURE.value
            message = self._abandoned or reason or "the writer stopped before the scan closed"
        # A reason that only sums up problems already in writer/messages is not repeated.
        summed_up = reason == self._problems_summary() and self._problems_in_file == len(
            self._problems
        )
        if reason and not summed_up:
            file.add_message(reason)
        status = "FAULT" if state is State.FAULT else "SUCCEEDED"
        if self._closed is None and state is State.OFF and not self._abandoned:
            self._unfinished = "the writer stopped before the scan closed"
        if self._unfinished is not None:
            status = "STOPPED"  # not complete: to be written again
            if self._closed is None and not self._abandoned:
                # The scan itself has not ended: its end fields are not the writer's to
                # fill (a reader must not take the writer's stop for the scan's failure).
                end_reason = message = None
                if not reason:
                    file.add_message(self._unfinished)
        end_time = document.end_time or datetime.now().astimezone().isoformat()
        self.end_reason = end_reason
        file.finish(document, status, end_reason, message, end_time)


def _contiguous(
    parts: list[PointsEvent],
) -> list[tuple[int, Points]]:
    """Runs of consecutive points: one write per run (fixed shapes joined, variable kept).

    Parts of ``JOIN_LIMIT`` bytes or more are written as they are: joining them would only
    copy them, and one write per large part costs nothing more.
    """
    runs: list[list[PointsEvent]] = []
    open_end: int | None = None  # where the last run ends, while a part may still join it
    for part in parts:
        large = not isinstance(part.data, list) and part.data.nbytes >= JOIN_LIMIT
        if not large and part.first == open_end:
            runs[-1].append(part)
        else:
            runs.append([part])
        open_end = None if large else part.first + part.count
    merged: list[tuple[int, Points]] = []
    for group in runs:
        first = group[0].first
        if isinstance(group[0].data, list):
            merged.append((first, [a for p in group for a in p.data]))
        elif len(group) == 1:
            merged.append((first, group[0].data))
        else:
            merged.append((first, np.concatenate([p.data for p in group])))
    return merged


_Run = tuple[int, Points]


def _bundles(pieces: list[_Run], limit: int) -> list[list[_Run]]:
    """Consecutive pieces of fixed shape, together up to ``limit`` bytes, written by one
    call (their whole chunks are compressed at once, on every core); a piece of variable
    shape is written alone."""
    bundles: list[list[_Run]] = []
    size = 0
    for piece in pieces:
        nbytes = _nbytes(piece[1])
        joins = (
            bundles and not isinstance(piece[1], list) and not isinstance(bundles[-1][0][1], list)
        )
        if joins and size + nbytes <= limit:
            bundles[-1].append(piece)
            size += nbytes
        else:
            bundles.append([piece])
            size = nbytes
    return bundles


def _nbytes(data: Points) -> int:
    return sum(a.nbytes for a in data) if isinstance(data, list) else data.nbytes


def _slices(first: int, data: Points, limit: int) -> list[tuple[int, Points]]:
    """``data`` (points from ``first``) cut into pieces of about ``limit`` bytes."""
    total = _nbytes(data)
    if total <= limit or len(data) <= 1:
        return [(first, data)]
    step = max(1, len(data) * limit // total)
    return [(first + i, data[i : i + step]) for i in range(0, len(data), step)]

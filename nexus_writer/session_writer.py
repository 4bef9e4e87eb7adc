"""NexusSessionWriter: follows one session and starts a NexusScanWriter for every new scan.

.. important::
   Sequential mode: one greenlet in the start hub (the service's main hub), which also runs
   the listeners of all scan writers. All scan consumers run as greenlets of *one* shared
   consumer :class:`~sync_primitives.Thread`, started and stopped with the session writer.
   ``statistics()`` and ``scans()`` may be called from any thread.

Memory stays bounded over thousands of scans: finished scan writers are dropped, and only
the statistics of the last ``keep_finished`` are kept.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from nexus_writer.lease import SessionLease
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.nexus.readings import Reading
from nexus_writer.protocol import DEFAULT_PREFIX, LeaseLost, ScanAnnouncement, SessionReader
from nexus_writer.protocol.mux import StreamMux
from sync_primitives import Event, Thread

from .scan_writer import NexusScanWriter
from .subscriber import Mode, State, Subscriber, SubscriberStatistics

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionStatistics:
    """The session writer and its scans."""

    writer: SubscriberStatistics
    scans_started: int
    scans_active: int
    scans_succeeded: int
    scans_failed: int
    recent: tuple[SubscriberStatistics, ...]  #: finished scans, newest last
    #: channel events received by the scan writers since the session writer started
    events_received: int
    #: of those, written (or given up with a failing channel)
    events_processed: int
    queue_depth: int  #: batches waiting for a consumer, all running scans together
    #: seconds from publication to written: the largest p50 and p99 of the running scans
    #: (None while no scan has written a batch)
    latency_p50: float | None
    latency_p99: float | None


@dataclass(frozen=True)
class ScanEvent:
    """A scan writer started or ended (for ``on_scan``: the device's scan lists)."""

    kind: str  #: "started" or "ended"
    key: str
    number: int | None  #: the scan number of its announcement (None at "ended")
    #: RUNNING at "started"; at "ended": OFF (written), FAULT (failed for good), or
    #: UNFINISHED (stopped before its end: left pending, written again from its start when
    #: a service next takes the session)
    state: str
    reason: str | None  #: why it failed or is unfinished, at "ended"
    url: str | None  #: ``file::/entry`` once known (at "ended"; None if never created)
    duration: float  #: seconds written, at "ended"
    points: int | None = None  #: points written (the most of any channel), at "ended"
    end_reason: str | None = None  #: as written in the entry (SUCCESS...), at "ended"


class NexusSessionWriter(Subscriber):
    """Writes every scan announced in ``session`` from now on (``since="$"``), or from an
    earlier position."""

    def __init__(
        self,
        client: redis.Redis,
        session: str,
        options: WriterOptions | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        since: str = "$",
        scan_mode: Mode = Mode.PARALLEL,
        keep_finished: int = 100,
        group: str | None = None,
        lease: SessionLease | None = None,
        on_scan: Callable[[ScanEvent], None] | None = None,
        readings: Callable[[], Mapping[str, Mapping[str, Reading]]] | None = None,
    ) -> None:
        """``on_scan``: called as each scan writer starts (in the session writer's hub) and
        ends (in its consumer's thread); it must not block. ``readings``: given to each
        scan writer (see NexusScanWriter).

        ``group``: keep the read position in Redis, in this consumer group of the
        session's stream (see :class:`~nexus_writer.protocol.SessionReader`): a scan is
        acknowledged once it is written (or failed for good), never when the writer stops
        first, so that the next writer of the group writes the scans this one did not
        finish and those announced while none ran. ``since`` then applies only when the
        group is created.

        ``lease`` (held, with ``group``): the group is only read and acknowledged, and files
        only written, under it; when it is lost the writer stops at once and writes
        nothing more (:class:`~nexus_writer.lease.SessionLease`)."""
        if lease is not None and group is None:
            raise ValueError("a lease guards a consumer group: give the group too")
        super().__init__(f"session {session}", Mode.SEQUENTIAL)
        self.client = client
        self.session = session
        self.options = options or WriterOptions()
        self.prefix = prefix
        self.scan_mode = scan_mode
        self._since = since
        self._reader: SessionReader | None = None
        self._thread: Thread | None = None
        #: Reads the streams of every open scan of the session (made in the start hub).
        self._mux: StreamMux | None = None
        self._active: dict[str, NexusScanWriter] = {}
        self._recent: deque[SubscriberStatistics] = deque(maxlen=keep_finished)
        self._started = self._succeeded = self._failed = 0
        # Event counts of the scans that have ended, and which writers they include: changed
        # in the consumers' thread, read with the running scans' counts from any thread. A
        # native lock, held for a few statements and never across a yield.
        self._totals_lock = threading.Lock()
        self._ended_received = self._ended_processed = 0
        # (weak: a writer leaves it when dropped, never while someone holds it)
        self._counted: weakref.WeakSet[NexusScanWriter] = weakref.WeakSet()
        self._retry_delay = 0.1
        self._finished_keys: OrderedDict[str, None] = OrderedDict()
        self._keep_keys = 10 * keep_finished
        self._scan_ended = Event()
        self._group = group
        self._lease = lease
        # Each scan writer's announcement (by writer: a scan announced again after its end
        # gets a writer of its own while the first may still be finishing).
        self._announced: dict[Subscriber, str] = {}
        self._on_scan = on_scan
        self._readings = readings
        #: Set once the writer follows the session from a fixed position: every scan
        #: announced after that is written (see :attr:`position`).
        self.following = Event()

    @property
    def position(self) -> str | None:
        """The id of the last announcement read in the session's stream (with a group, the
        last delivered to the group); None before the writer follows the session.

        Raises:
            redis.ConnectionError, redis.TimeoutError: with a group, Redis cannot be reached.
        """
        return self._reader.delivered if self._reader is not None else None

    def start(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start following the session. "Now" (``since="$"``) is this call if Redis can be
        reached (else the moment it can): a scan announced after :attr:`following` is set
        is written.
        """
        try:
            self._follow()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            _log.warning(
                "session %s: Redis unreachable at start (%s); will retry", self.session, exc
            )
        self._mux = StreamMux(
            self.client, self.prefix, retry_max_delay=self.options.retry_max_delay
        )
        if self.scan_mode is Mode.PARALLEL:
            self._thread = Thread(name=f"{self.session}-consumers")
            self._thread.start()
        super().start(wait, timeout)

    # -- listener: announcements --------------------------------------------------------------

    def listen(self, timeout: float) -> list[ScanAnnouncement]:
        self._purge()
        try:
            reader = self._reader or self._follow()
            announcements = reader.read(timeout)
        except LeaseLost as exc:
            _log.warning("%s: no more scans are taken", exc)  # it names the session
            self._request_stop()
            return []
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            _log.warning(
                "session %s: Redis unreachable (%s); retrying in %.1f s",
                self.session,
                exc,
                self._retry_delay,
            )
            self._stop_requested.wait(self._retry_delay)
            self._retry_delay = min(2 * self._retry_delay, self.options.retry_max_delay)
            return []
        self._retry_delay = 0.1
        return announcements

    def _follow(self) -> SessionReader:
        """Pin the read position (a network round trip) and say so.

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis cannot be reached.
        """
        reader = self._reader = SessionReader(
            self.client,
            self.session,
            self.prefix,
            self._since,
            group=self._group,
            guard=self._lease,
        )
        if self._group is None:
            _log.info(
                "session %s: following from announcement %s: every scan announced after it "
                "is written",
                self.session,
                reader.position,
            )
        else:
            _log.info(
                "session %s: following from announcement %s with consumer group %r (%s): "
                "every scan announced after it, and any the group had not finished, is "
                "written",
                self.session,
                reader.delivered,
                self._group,
                "created now" if reader.created else "continued",
            )
        self.following.set()
        return reader

    def listen_finished(self) -> bool:
        return False  # a session goes on until the writer is stopped

    # -- consumer: one scan writer per scan -----------------------------------------------------

    def consume(self, events: list[ScanAnnouncement]) -> None:
        for announcement in events:
            running = self._active.get(announcement.key)
            if running is not None and not running.done():
                self._drop_duplicate(running, announcement)
                continue
            writer = NexusScanWriter(
                self.client,
                announcement.key,
                self.options,
                mode=self.scan_mode,
                consumer_thread=self._thread,
                on_finish=self._scan_finished,
                lease=self._lease,
                readings=self._readings,
                mux=self._mux,
            )
            self._active[announcement.key] = writer
            self._announced[writer] = announcement.stream_id
            self._started += 1
            if self._on_scan is not None:
                self._on_scan(
                    ScanEvent(
                        "started", writer.key, announcement.number, "RUNNING", None, None, 0.0
                    )
                )
            writer.start()
            _log.info(
                "session %s: scan %d (%s) started",
                self.session,
                announcement.number,
                announcement.key,
            )

    def _drop_duplicate(self, running: NexusScanWriter, announcement: ScanAnnouncement) -> None:
        """A scan announced again while its writer runs: the writer follows the first
        announcement (acknowledged when the scan is done with); this one is acknowledged
        now, or it would stay pending until the session is next taken."""
        first = self._announced.get(running)
        if self._reader is None or first in (None, announcement.stream_id):
            return
        _log.warning(
            "session %s: scan %s announced again (%s) while it is written: ignored",
            self.session,
            announcement.key,
            announcement.stream_id,
        )
        self._acknowledge(announcement.stream_id, announcement.key)

    def _acknowledge(self, stream_id: str, key: str) -> None:
        """Acknowledge the announcement ``stream_id`` of scan ``key``; if Redis or the lease
        refuses, the next writer of the session gets it again (and finds the scan written
        if it was)."""
        assert self._reader is not None
        try:
            self._reader.ack(stream_id)
        except (redis.ConnectionError, redis.TimeoutError, LeaseLost) as exc:
            _log.warning(
                "session %s: cannot acknowledge scan %s (%s): the next writer will see it again",
                self.session,
                key,
                exc,
            )

    def _scan_finished(self, writer: Subscriber) -> None:
        """A scan writer has ended (called in its consumer's thread: the shared consumer
        thread, or the start hub, the only writers of these counters)."""
        stats = writer.statistics()
        self._recent.append(stats)
        if isinstance(writer, NexusScanWriter):
            with self._totals_lock:
                self._ended_received += stats.events_received
                self._ended_processed += stats.events_processed
                self._counted.add(writer)
        unfinished = writer.unfinished if isinstance(writer, NexusScanWriter) else None
        if self._on_scan is not None and isinstance(writer, NexusScanWriter):
            self._on_scan(
                ScanEvent(
                    "ended",
                    writer.name,
                    None,
                    "UNFINISHED" if unfinished is not None else stats.state,
                    unfinished
                    if unfinished is not None
                    else "written before: nothing to do"
                    if writer.written_before
                    else stats.reason,
                    writer.url,
                    stats.duration,
                    writer.progress()[0],
                    writer.end_reason,
                )
            )
        if writer.state is State.OFF:
            self._succeeded += 1
        else:
            self._failed += 1
        self._finished_keys[writer.name] = None
        while len(self._finished_keys) > self._keep_keys:
            self._finished_keys.popitem(last=False)
        stream_id = self._announced.pop(writer, None)
        if stream_id is not None and unfinished is not None:
            # Pending in the group: the next service to take the session writes it again.
            _log.warning(
                "session %s: scan %s stays pending (%s): it is written again, from its "
                "start, when a service next takes the session",
                self.session,
                writer.name,
                unfinished,
            )
        elif stream_id is not None and self._reader is not None:
            # Done with for good: written, or failed for a reason writing again cannot mend.
            self._acknowledge(stream_id, writer.name)
        self._scan_ended.set()

    def wait_for_scans(self, keys: list[str], timeout: float | None = None) -> bool:
        """Wait until the scans with these keys have been written (and their writers have
        ended); False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._scan_ended.clear()  # before looking: a scan ending now sets it again
            if all(key in self._finished_keys for key in keys):
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._scan_ended.wait(remaining)

    def _purge(self) -> None:
        for key, writer in list(self._active.items()):
            if writer.done():
                del self._active[key]

    def finish(self, state: State, reason: str | None) -> None:
        """Stop the scan writers still running; each writes what it has and closes."""
        for writer in list(self._active.values()):
            writer.stop()
        deadline = time.monotonic() + 30.0
        for writer in list(self._active.values()):
            if not writer.join(max(0.0, deadline - time.monotonic())):
                writer.kill()
        self._purge()
        if self._mux is not None:
            self._mux.close()
        if self._thread is not None:
            self._thread.stop(timeout=30.0)

    # -- views ----------------------------------------------------------------------------------

    def scans(self) -> list[NexusScanWriter]:
        """The scan writers still running."""
        return list(self._active.values())

    def session_statistics(self) -> SessionStatistics:
        # list() copies atomically; only the listener greenlet changes the dict.
        writers = list(self._active.values())
        running = [(w, w.statistics()) for w in writers]
        with self._totals_lock:
            # A writer that ended since its statistics were taken is in the totals already:
            # each scan's events are counted once, and the counts never go back.
            received, processed = self._ended_received, self._ended_processed
            live = [s for w, s in running if w not in self._counted]
        p50 = [s.latency_p50 for s in live if s.latency_p50 is not None]
        p99 = [s.latency_p99 for s in live if s.latency_p99 is not None]
        return SessionStatistics(
            writer=self.statistics(),
            scans_started=self._started,
            scans_active=sum(1 for w in writers if not w.done()),
            scans_succeeded=self._succeeded,
            scans_failed=self._failed,
            recent=tuple(self._recent),
            events_received=received + sum(s.events_received for s in live),
            events_processed=processed + sum(s.events_processed for s in live),
            queue_depth=sum(s.queue_depth for s in live),
            latency_p50=max(p50, default=None),
            latency_p99=max(p99, default=None),
        )

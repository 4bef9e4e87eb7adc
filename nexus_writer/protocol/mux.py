"""StreamMux: one blocking XREAD for the streams of many scan readers.

.. important::
   A mux belongs to one gevent hub: :meth:`StreamMux.follow`, :meth:`StreamMux.unfollow`,
   :meth:`StreamMux.close` and its reading greenlet run in greenlets of that hub (the
   service's main hub, which runs every scan's listener). A :class:`Feed`'s wake event is
   a :class:`sync_primitives.Event`, so that other threads may set it too (a stop).

Without it every open scan kept a blocking XREAD of its own: a pooled connection each
(redis-py's pool of 100 was a wall at 100 scans), a read every time any of its streams
grew, and a poll four times a second to notice a stop. With it a session's scans share
one blocking read, which names every stream of every scan still open, and hands each
scan's entries to its :class:`Feed`; the scan's listener turns them into events itself
(:meth:`ScanReader.take`). An idle scan costs nothing: its listener waits for its feed's
wake event, set when its entries come or when it is stopped. A scan that follows while
the read waits rings a doorbell (an XADD to a stream of the mux's own, which that read
names too), so that the next read names its streams; one that leaves is left out of the
next read (what the read under way brings for it is dropped: its listener reads on
from its own position).

After a read that brought entries the mux waits before the next, so that the next read
brings what many streams published meanwhile instead of one entry of one stream: the cost
of a read, which names every stream, is paid per round, not per entry. The wait follows
that cost: ``gather_per_stream`` seconds per stream named, at most ``gather`` (5 ms from
2,500 streams on), and none below a millisecond (500 streams), which gevent's timers
cannot wait. A scan of ten channels reads again at once (a fixed 5 ms had taken a 1 kHz
scan's latency p50 from 1.2 to 7.5 ms); 3000 channels, or 200 scans of ten, wait the full
5 ms (without it, a 3000-channel scan's p99 went from 2.2 s to 5 s).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

import gevent
import gevent.event
import redis

from sync_primitives import Event

from ._xread import Entries, xread
from .keys import Keys, text
from .model import ScanState
from .reader import ScanReader, _id_key

_log = logging.getLogger(__name__)


class MuxFailedError(RuntimeError):
    """The stream mux stopped reading for good (Redis refused its read): nothing more
    comes for any scan. Not the scans' fault: they are to be written again."""


#: Most seconds after a read with entries before the next read.
GATHER = 0.005
#: Seconds of gathering per stream that a read names (about what naming it costs).
GATHER_PER_STREAM = 2e-6
#: A shorter gather is not made (gevent's timers wait a millisecond at least).
MIN_GATHER = 1e-3
#: Seconds a read waits for entries before it is made again: a Redis that stops answering
#: is noticed within this and the grace of :func:`xread`, and it is the only call an idle
#: session makes.
BLOCK = 30.0
#: Seconds the doorbell stream lives after its last ring (a mux killed without closing).
DOORBELL_EXPIRE = 24 * 3600


class Feed:
    """What the mux read for one :class:`ScanReader` and its listener has not taken yet."""

    def __init__(self, mux: StreamMux, reader: ScanReader, wake: Event) -> None:
        self._mux = mux
        self.reader = reader
        #: Set whenever entries arrive for the reader.
        self.wake = wake
        #: The position of each stream that the mux has read up to (ahead of the reader's
        #: own while the listener has not taken what was read).
        self.ids: dict[str, str] = reader.wanted()
        self._entries: dict[str, Entries] = {}
        self._wrong: dict[str, str] = {}  # stream: its type

    def take(self) -> list[object]:
        """The reader's events from what arrived since the last call, in order.

        Raises:
            redis.ConnectionError, redis.TimeoutError: the scan's document must be read
                again and Redis is away (call again: nothing taken is lost).
            MuxFailedError: the mux failed for good (Redis refused its read): nothing more
                comes.
        """
        if self._mux.error is not None and not self._entries:
            error = self._mux.error
            raise MuxFailedError(
                f"reading the scan's streams failed: {type(error).__name__}: {error}"
            )
        refreshed = self.reader.refresh()  # the only call that may fail: before taking
        entries, self._entries = self._entries, {}
        # The events stream last, as in one XREAD: a CLOSED after the data before it.
        last = Keys.events(self.reader.key)
        if last in entries:
            entries[last] = entries.pop(last)
        events: list[object] = [*refreshed, *self.reader.take(entries)]
        wrong, self._wrong = self._wrong, {}
        for stream, kind in wrong.items():
            events.extend(self.reader.drop(stream, kind))
        wanted = self.reader.wanted()
        for stream in [s for s in self.ids if s not in wanted]:
            del self.ids[stream]  # ended: no longer read
        return events

    def _deliver(self, stream: str, entries: Entries) -> None:
        """Entries of ``stream``; those at or before this feed's position (read for
        another reader of the same stream, which is further behind) are skipped."""
        after = _id_key(self.ids.get(stream, "0-0"))
        new = [entry for entry in entries if _id_key(entry[0]) > after]
        if new:
            self._entries.setdefault(stream, []).extend(new)
            self.ids[stream] = new[-1][0].decode()
            self.wake.set()

    def _wrong_type(self, stream: str, kind: str) -> None:
        self._wrong[stream] = kind
        self.ids.pop(stream, None)
        self.wake.set()


class StreamMux:
    """Reads the streams of the readers that follow it, one blocking XREAD at a time."""

    def __init__(
        self,
        client: redis.Redis,
        doorbell_prefix: str | None = None,
        *,
        gather: float = GATHER,
        gather_per_stream: float = GATHER_PER_STREAM,
        block: float = BLOCK,
        retry_max_delay: float = 5.0,
    ) -> None:
        """``doorbell_prefix``: the key prefix of the doorbell stream
        (``<prefix>:mux:<random>:doorbell``), for a mux whose readers come and go while it
        reads; without it, readers that follow while a read waits are read from the next
        read on (at most ``block`` seconds later)."""
        self.client = client
        self.gather = gather
        self.gather_per_stream = gather_per_stream
        self.block = block
        self.retry_max_delay = retry_max_delay
        self._doorbell = (
            f"{doorbell_prefix}:mux:{secrets.token_hex(8)}:doorbell" if doorbell_prefix else None
        )
        self._rung = "0-0"
        #: The doorbell, left out of the next read after a NOPERM to learn whether it is
        #: the key refused.
        self._suspect: str | None = None
        self._feeds: dict[ScanReader, Feed] = {}
        self._changed = gevent.event.Event()
        self._waiting = False  # a read is out, with the streams known when it was sent
        self._greenlet: gevent.Greenlet | None = None
        self._closed = False
        #: monotonic time of the last read that failed (Redis away), 0.0 if none did: a
        #: scan's silence then is not its publisher's.
        self.outage = 0.0
        self.reads = 0  #: reads made (statistics, tests)
        self.gathers = 0  #: waits after a read, to gather (statistics, tests)
        #: Why reading failed for good (the scans that follow it fail with it).
        self.error: BaseException | None = None

    def follow(self, reader: ScanReader, wake: Event) -> Feed:
        """Start reading ``reader``'s streams from where it is; ``wake`` is set whenever
        entries arrive for it (it must not be CLOSED: read the rest with ``reader.read``).

        Raises:
            RuntimeError: the mux is closed.
        """
        if self._closed:
            raise RuntimeError("the stream mux is closed")
        if self.error is not None:
            # Reading failed for good for the scans that were open then (an ACL, say):
            # a new scan is given a new try, which may find the cause mended.
            _log.info("stream mux: reading again for a new scan (it failed: %s)", self.error)
            self.error = None
        feed = self._feeds[reader] = Feed(self, reader, wake)
        self._changed.set()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif self._waiting and self._doorbell is not None:
            self._ring()  # else it waits for the read under way to end
        return feed

    def unfollow(self, feed: Feed) -> None:
        """Stop reading the feed's streams (what it holds stays for ``feed.take``)."""
        self._feeds.pop(feed.reader, None)

    def close(self) -> None:
        """Stop reading for everyone and remove the doorbell; idempotent."""
        self._closed = True
        self._feeds.clear()
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
        if self._doorbell is not None:
            with contextlib.suppress(redis.RedisError):  # else it expires
                self.client.delete(self._doorbell)

    def _ring(self) -> None:
        assert self._doorbell is not None
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._doorbell, {"ring": 1}, maxlen=1, approximate=False)
                pipe.expire(self._doorbell, DOORBELL_EXPIRE)
                pipe.execute()
        except redis.RedisError as exc:  # the read fails too, and is made again
            _log.debug("stream mux: cannot ring the doorbell: %s", exc)

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as exc:  # a bug, or Redis refusing the read: say so to all
            _log.exception("stream mux: reading failed")  # (and not again by gevent)
            self.error = exc
            for feed in self._feeds.values():
                feed.wake.set()
        except BaseException:  # killed (close), or the interpreter exits
            for feed in self._feeds.values():
                feed.wake.set()
            raise

    def _read_loop(self) -> None:
        delay = 0.1
        while not self._closed:
            feeds = list(self._feeds.values())
            owners = self._owners(feeds)
            if not owners:
                if not self._feeds:
                    return  # started again by the next follow
                self._changed.clear()
                self._changed.wait(self.block)
                continue
            try:
                response = self._read(owners, min(feed.reader.count for feed in feeds))
            except redis.exceptions.NoPermissionError as exc:  # NOPERM (redis-py drops it)
                self._refused(exc)  # raises unless reading without the doorbell is left
                continue
            except redis.ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    self._wrong_types(owners)
                    continue
                # BUSY (a long script), LOADING (a restart), ...: Redis answers again later.
                delay = self._wait_out(f"Redis refused the read ({exc})", delay)
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = self._wait_out(f"Redis unreachable ({exc})", delay)
                continue
            delay = 0.1
            if self._suspect is not None:
                _log.error(
                    "Redis refuses to read the doorbell %s (NOPERM): going on without it (a "
                    "scan that starts while the shared read waits is read up to %g s late)",
                    self._suspect,
                    self.block,
                )
                self._suspect = None
            self._dispatch(response, owners)
            if response:
                # Below a millisecond, gevent's timers (libev on epoll) wait a whole one:
                # a small read is made again at once.
                gather = min(self.gather, len(owners) * self.gather_per_stream)
                if gather >= MIN_GATHER:
                    self.gathers += 1
                    gevent.sleep(gather)

    def _wait_out(self, why: str, delay: float) -> float:
        """An outage: say why, wait ``delay`` and return the next delay."""
        self.outage = time.monotonic()
        _log.warning("%s; reading again in %.1f s", why, delay)
        gevent.sleep(delay)
        self.outage = time.monotonic()
        return min(2 * delay, self.retry_max_delay)

    def _refused(self, exc: redis.ResponseError) -> None:
        """NOPERM (an ACL): the read is made again without the doorbell, which an ACL
        written for the protocol's keys alone does not allow; if that read is allowed, the
        doorbell is given up (and the loop says so), else reading ends.

        Raises:
            redis.ResponseError: the read is refused without the doorbell too.
        """
        if self._doorbell is None:
            if self._suspect is not None:  # not the doorbell's fault: kept
                self._doorbell, self._suspect = self._suspect, None
            raise exc
        self._suspect, self._doorbell = self._doorbell, None

    @staticmethod
    def _owners(feeds: list[Feed]) -> dict[str, list[Feed]]:
        """The feeds of each stream to read (a CLOSED reader's listener reads the rest
        itself; two readers of one scan, announced again, share its streams)."""
        owners: dict[str, list[Feed]] = {}
        for feed in feeds:
            if feed.reader.state is not ScanState.CLOSED:
                for stream in feed.ids:
                    owners.setdefault(stream, []).append(feed)
        return owners

    def _dispatch(self, response: dict[str, Entries], owners: dict[str, list[Feed]]) -> None:
        for stream, entries in response.items():
            if stream not in owners:  # the doorbell
                self._rung = entries[-1][0].decode()
                continue
            for feed in owners[stream]:
                if self._feeds.get(feed.reader) is feed:  # not unfollowed meanwhile
                    feed._deliver(stream, entries)

    def _read(self, owners: dict[str, list[Feed]], count: int) -> dict[str, Entries]:
        streams = {
            stream: min((feed.ids[stream] for feed in feeds), key=_id_key)
            for stream, feeds in owners.items()
        }
        if self._doorbell is not None:
            streams[self._doorbell] = self._rung
        self._waiting = True
        try:
            response = xread(self.client, streams, count, self.block)
        finally:
            self._waiting = False
        self.reads += 1
        return response

    def _wrong_types(self, owners: dict[str, list[Feed]]) -> None:
        """A stream is of another type: tell its reader (which reports it and reads the
        others on); a doorbell of another type is given up."""
        streams = [*owners, *([self._doorbell] if self._doorbell else [])]
        with self.client.pipeline() as pipe:
            for stream in streams:
                pipe.type(stream)
            kinds = pipe.execute()
        for stream, kind in zip(streams, map(text, kinds), strict=True):
            if kind in ("stream", "none"):
                continue
            if stream == self._doorbell:
                _log.error("stream mux: the doorbell %s is not a stream: not rung", stream)
                self._doorbell = None
            else:
                for feed in owners[stream]:
                    feed._wrong_type(stream, kind)

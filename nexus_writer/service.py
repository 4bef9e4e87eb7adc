"""WriterService: the writer of one session, active or standby, as ``nexus-writer run`` runs it.

.. important::
   :meth:`WriterService.run` runs in a greenlet of the service's main hub (it waits
   cooperatively) and returns when :meth:`~WriterService.stop` is called, from any thread
   or a signal handler. :attr:`~WriterService.role` and :meth:`~WriterService.writer` may
   be read from any thread.

Any number of services may run on one session (on one host or several, against one
Redis); one of them is *active*: it holds the session's lease
(:class:`~nexus_writer.lease.SessionLease`) and runs a
:class:`~nexus_writer.session_writer.NexusSessionWriter`. The others are *standby*: they
try to take the lease every ``ttl / 5`` seconds and become active when the active one
stops (it gives the lease back) or dies (its lease runs out). The session writer keeps its
place in the consumer group ``nexus-writer``, so the new active writer resumes exactly the
scans the old one had not finished.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import gevent
import redis

from nexus_writer import atomic
from nexus_writer.lease import DEFAULT_TTL, Holder, LeaseStatistics, SessionLease
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.nexus.readings import Reading
from nexus_writer.protocol import DEFAULT_PREFIX, Keys, ProtocolError, SessionReader
from nexus_writer.protocol.keys import text
from nexus_writer.session_writer import NexusSessionWriter, ScanEvent, SessionStatistics
from nexus_writer.subscriber import Mode, State
from sync_primitives import Event

_log = logging.getLogger(__name__)

#: The consumer group in which the service keeps its place in a session (see
#: docs/operations.md).
WRITER_GROUP = "nexus-writer"
#: Seconds to let running scans close at stop before their writers are killed.
STOP_TIMEOUT = 60.0


class Role(enum.Enum):
    STARTING = "starting"  #: Redis not reached yet
    STANDBY = "standby"  #: another service writes the session
    ACTIVE = "active"  #: this service writes the session
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServiceStatistics:
    """A snapshot of a writer service (plain data: for the device, monitors, tests)."""

    session: str
    role: str
    lease: LeaseStatistics
    errors: int  #: Redis unreachable, a key of another type, the session writer failing...
    last_error: str | None
    #: what keeps the service from writing or standing by now (the last error, until the
    #: next attempt to take the lease gets an answer from Redis), or None
    problem: str | None
    stopping: bool  #: stop() was called; the role says "stopped" once it has
    holder: str | None  #: who writes the session, while this service stands by
    writer: SessionStatistics | None  #: while active


def all_acknowledged(client: redis.Redis, session: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether the writer group of ``session`` has been given every announcement and has
    acknowledged each (every scan done with: written, or failed for good).

    Raises:
        redis.ResponseError: the session has no stream or no group yet.
    """
    stream = Keys(prefix).session_scans(session)
    groups = {text(g["name"]): g for g in client.xinfo_groups(stream)}
    group = groups.get(WRITER_GROUP)
    if group is None or group["pending"] != 0:
        return False
    newest = cast(list[tuple[bytes, Any]], client.xrevrange(stream, count=1))
    return bool(newest) and text(group["last-delivered-id"]) == text(newest[0][0])


#: Connections a service's client must be allowed: the shared read of the open scans, the
#: read of new scans, and one for commands.
MIN_CONNECTIONS = 3


class WriterService:
    """Writes one session whenever it holds the session's lease."""

    def __init__(
        self,
        client: redis.Redis,
        session: str,
        options: WriterOptions | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        since: str = "$",
        scan_mode: Mode = Mode.PARALLEL,
        lease_ttl: float = DEFAULT_TTL,
        ready_file: Path | None = None,
        on_scan: Callable[[ScanEvent], None] | None = None,
        readings: Callable[[], Mapping[str, Mapping[str, Reading]]] | None = None,
        name: str | None = None,
    ) -> None:
        """``since``: where the session is followed from the first time ("$": now; "0-0":
        every announcement still in Redis); ``ready_file``: see docs/operations.md;
        ``on_scan``, ``readings``: given to each session writer (see NexusSessionWriter);
        ``name``: how this service names itself in the lease, to its standbys (see
        SessionLease).

        Raises:
            ValueError: a bad session name, prefix or lease ttl, or a client whose pool
                has fewer than MIN_CONNECTIONS connections.
        """
        pool_size = getattr(client.connection_pool, "max_connections", MIN_CONNECTIONS)
        if pool_size < MIN_CONNECTIONS:
            raise ValueError(
                f"the Redis client may open {pool_size} connection(s): the service needs "
                f"{MIN_CONNECTIONS} at least (its two blocking reads, and its commands); "
                "raise max_connections in the URL"
            )
        self.client = client
        self.session = session
        self.options = options or WriterOptions()
        self.prefix = prefix
        self.since = since
        self.scan_mode = scan_mode
        self.ready_file = ready_file
        self.on_scan = on_scan
        self.readings = readings
        self.lease = SessionLease(client, session, prefix, ttl=lease_ttl, name=name)
        self._role = Role.STARTING
        self._writer: NexusSessionWriter | None = None
        #: Set once the service is ready, as active or standby: when ``ready_file`` is
        #: written (every scan announced after it is written); cleared when it stops.
        #: A sync_primitives Event: wait on it from any thread.
        self.ready = Event()
        self._stop = Event()
        self._wake = Event()  # stop, lease lost, writer ended
        self._failures = 0
        self._errors = 0
        self._last_error: str | None = None
        self._problem: str | None = None
        self._holder: str | None = None
        self.exit_status = 0

    @property
    def role(self) -> Role:
        return self._role

    def writer(self) -> NexusSessionWriter | None:
        """The session writer while the service is active."""
        return self._writer

    def statistics(self) -> ServiceStatistics:
        writer = self._writer
        lease = self.lease.statistics()
        problem = self._problem
        if problem is None and self._role is Role.ACTIVE and lease.unreachable is not None:
            problem = f"Redis unreachable: {lease.unreachable}: writing pauses until it answers"
        elif problem is None and self._role is Role.ACTIVE and lease.held and not lease.valid_for:
            # A renewal is still waiting for Redis's answer (slow, frozen): the lease can no
            # longer be trusted, and every write waits for it (SessionLease.fence).
            problem = (
                "Redis has not renewed the writer lease in time (slow or not answering): "
                "writing pauses until it answers"
            )
        return ServiceStatistics(
            session=self.session,
            role=self._role.value,
            lease=lease,
            errors=self._errors,
            last_error=self._last_error,
            problem=problem,
            stopping=self._stop.is_set(),
            holder=self._holder if self._role is Role.STANDBY else None,
            writer=writer.session_statistics() if writer is not None else None,
        )

    def _error(self, what: str) -> None:
        self._errors += 1
        self._last_error = self._problem = what

    def stop(self) -> None:
        """Ask :meth:`run` to stop: running scans are closed with what was received."""
        self._stop.set()
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Stand by or write until :meth:`stop`; returns the exit status (0, or 1 if the
        session writer ended in FAULT)."""
        unreachable_delay = 0.1
        standby_for: Holder | None = None
        try:
            while not self._stop.is_set():
                try:
                    taken = self.lease.acquire()
                    holder = None if taken else self.lease.holder()
                except redis.RedisError as exc:
                    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                        what, log = f"Redis unreachable: {exc}", _log.warning
                        until = "it answers"
                    else:  # the lease's key made something else
                        what = f"cannot take the writer lease {self.lease.key}: {exc}"
                        log, until = _log.error, "it is mended"
                    self._error(what)
                    self._problem = f"{what}: retrying until {until}"
                    log("session %s: %s; retrying in %.1f s", self.session, what, unreachable_delay)
                    self._stop.wait(unreachable_delay)
                    unreachable_delay = min(2 * unreachable_delay, self.options.retry_max_delay)
                    continue
                unreachable_delay = 0.1
                self._problem = None
                if taken:
                    standby_for = None
                    self._write()
                    continue
                if holder != standby_for:
                    if not self._follow_as_standby():
                        self._stop.wait(self.lease.interval)
                        continue
                    standby_for = holder
                    self._standby(holder)
                self._stop.wait(self.lease.interval)
        finally:
            self.lease.release()
            self._role = Role.STOPPED
            self.ready.clear()
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)
        return self.exit_status

    def _follow_as_standby(self) -> bool:
        """Make sure that the session's group exists before this service says it is ready
        as a standby: the active service may have died before it made it, and a scan
        announced after the standby's ready file must be written when it takes over.
        False (and logged) if it cannot be made now."""
        try:
            SessionReader(self.client, self.session, self.prefix, self.since, group=WRITER_GROUP)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            _log.warning("session %s: Redis unreachable (%s)", self.session, exc)
            return False
        except (redis.RedisError, ProtocolError) as exc:
            self._error(f"cannot follow the session: {exc}")
            _log.error("session %s: cannot follow the session: %s", self.session, exc)
            return False
        self.since = "0-0"  # the group exists: never "now" again (see _announce_active)
        return True

    def _standby(self, holder: Holder | None) -> None:
        self._role = Role.STANDBY
        self._holder = str(holder) if holder else None
        _log.info(
            "session %s: standby: the session is written by %s; this service takes over "
            "within %g s after that one stops or dies",
            self.session,
            holder or "another service",
            self.lease.ttl + self.lease.interval,
        )
        self._announce({"role": "standby", "holder": str(holder) if holder else None})

    def _write(self) -> None:
        """Active: write the session until stopped, or until the lease is lost."""
        self._role = Role.ACTIVE
        term = self.lease.statistics().term
        _log.info(
            "session %s: this service writes the session (writer lease, term %s)",
            self.session,
            term,
        )
        self.lease.keep()
        self._wake.clear()
        lost = self.lease.lost
        watchers = [gevent.spawn(self._wake_on, lost.wait)]
        writer = self._writer = NexusSessionWriter(
            self.client,
            self.session,
            self.options,
            prefix=self.prefix,
            since=self.since,
            scan_mode=self.scan_mode,
            group=WRITER_GROUP,
            lease=self.lease,
            on_scan=self.on_scan,
            readings=self.readings,
        )
        failure: str | None = None
        try:
            writer.start()
        except Exception as exc:  # e.g. another protocol version, a key of another type
            failure = f"{type(exc).__name__}: {exc}"
        try:
            if failure is None:
                watchers.append(gevent.spawn(self._wake_on, writer.join))
                watchers.append(gevent.spawn(self._announce_active, writer))
                while not (self._stop.is_set() or lost.is_set() or writer.done()):
                    self._wake.wait()
                    self._wake.clear()
                self._close(writer)
        finally:
            gevent.killall(watchers)
            self._writer = None
        if writer.state is State.FAULT and not lost.is_set() and not self._stop.is_set():
            failure = writer.statistics().reason
        if failure is not None:
            # Not the lease: the session writer itself failed. Give the session to a
            # standby, if there is one, and try again later.
            self._failures += 1
            self._error(f"the session writer failed: {failure}")
            delay = min(60.0, 2.0**self._failures)
            _log.error(
                "session %s: the session writer failed (%s): the lease is given back and "
                "this service tries again in %g s",
                self.session,
                failure,
                delay,
            )
            self.lease.release()
            self._stop.wait(delay)
            return
        self._failures = 0
        if writer.state is State.FAULT:
            self.exit_status = 1
        if lost.is_set() and not self._stop.is_set():
            why = self.lease.statistics().lost
            _log.error(
                "session %s: this service no longer holds the writer lease (%s): it has "
                "stopped writing and stands by",
                self.session,
                why,
            )
        self.lease.release()

    def _close(self, writer: NexusSessionWriter) -> None:
        """Stop the session writer; its scans close with what they received. While the
        lease is in doubt (Redis away) writes would wait for it: give it up instead, so
        that the scans stop at once and the next holder writes them again."""
        writer.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        while not writer.join(self.lease.interval):
            if not self.lease.held():
                self.lease.release()
            if time.monotonic() > deadline:
                writer.kill()
                writer.join(10.0)
                break

    def _wake_on(self, wait: Callable[[], object]) -> None:
        wait()
        self._wake.set()

    def _announce_active(self, writer: NexusSessionWriter) -> None:
        writer.following.wait()
        # ``since`` was for the group's creation. Should Redis lose the group while this
        # service runs, it is made again for every scan still in the stream (as the
        # session writer does when a read finds it gone), never from "now".
        self.since = "0-0"
        try:
            position = writer.position
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            position = None  # the log line names it; Redis just went away again
            _log.warning("session %s: cannot read the position (%s)", self.session, exc)
        self._announce({"role": "active", "position": position})

    def _announce(self, fields: dict[str, object]) -> None:
        """Set :attr:`ready` and write the ready file (atomically), if asked: the service
        is ready, as active or standby."""
        self.ready.set()
        if self.ready_file is None:
            return
        ready = {
            "session": self.session,
            **fields,
            "pid": os.getpid(),
            "time": datetime.now().astimezone().isoformat(),
        }
        atomic.write_text(self.ready_file, json.dumps(ready) + "\n")

"""SessionLease: one writer service per session, through a lease in Redis.

.. important::
   A lease belongs to one service process. :meth:`SessionLease.acquire`,
   :meth:`~SessionLease.release` and :meth:`~SessionLease.keep` are called by the service
   (its main hub); the renewals run in a :class:`~sync_primitives.Thread` of their own, so
   that a busy hub cannot delay them; :meth:`~SessionLease.fence`,
   :meth:`~SessionLease.held`, :meth:`~SessionLease.confirm` and :attr:`~SessionLease.token`
   may be called from any thread (the scan consumers call ``fence`` before each write).

The lease is the Redis string ``<prefix>:session:<session>:writer`` (docs/protocol.md):
``"<term> <host> <pid> <nonce>"``, set with an expiry of ``ttl`` seconds and renewed every
``ttl / 5``. ``<prefix>:session:<session>:writer:term`` counts the terms: every time the
lease is taken anew (nobody held it) the count goes up by one, in the same Lua script.
A term is therefore a fencing token: a holder whose term is no longer the newest has been
replaced, whatever its clock says.

Why it is safe (the invariants):

* The holder counts its lease valid until ``sent + 0.8 * ttl``, where ``sent`` is the
  monotonic time *before* it sent the renewal that succeeded: Redis's expiry runs from
  later than that, so the holder stops trusting its lease before Redis lets anyone else
  take it (the 20 % absorb clock-rate differences and the moment between a check and a
  write).
* :meth:`fence` is the check before every file write: it returns while the lease is
  valid, raises :class:`LeaseLost` once another term exists, and *waits* in between
  (Redis unreachable: nobody can take over either). When the holder reaches Redis again
  and nobody took the lease meanwhile, it takes it again with the very next term
  (``term + 1``: no other term happened in between) and its writes go on where they
  paused; any other term means somebody else wrote, and this holder's term is over. A
  renewal whose answer the holder stopped waiting for may still be run by Redis (frozen,
  then resumed after the lease ran out): it takes the lease anew in the holder's name,
  and the holder adopts that term on the same condition (the very next one).
* Redis-side state (the session's consumer group) is only changed by Lua scripts that
  check the lease value first (:attr:`token`), so an old holder cannot take announcements
  or acknowledge scans even if its process was frozen for a minute.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

import redis

from nexus_writer.protocol import Keys
from nexus_writer.protocol.errors import LeaseLost
from sync_primitives import Event, Lock, Thread

_log = logging.getLogger(__name__)

#: Default seconds a lease lasts without renewal: how long a standby waits, at most,
#: after the active writer died before it takes over (plus one renewal interval).
DEFAULT_TTL = 5.0
#: The range of a lease's time to live, in seconds.
MIN_TTL, MAX_TTL = 0.1, 3600.0
#: Share of the ttl that the holder trusts its lease after a renewal was sent.
TRUSTED = 0.8

# KEYS: lease, term counter. ARGV: owner, ttl ms, the term the caller holds ("" if none).
# Returns {status, term}: 1 renewed (same term), 2 taken anew with this new term, 3 this
# owner's value with a term the caller does not know (renewed with it), 0 held by somebody
# else (term of the holder's value, for the log).
#
# Status 3: a claim of this process that Redis ran after the process had stopped waiting
# for its answer (Redis frozen, then resumed with the lease run out: the late claim took it
# anew). Only this process writes its owner string, so the term is its own; the caller
# adopts it if it is the very next one (nobody held the lease in between), as for status 2.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  if not space then return {0, 0} end  -- not a writer's value: somebody else's all the same
  local term = tonumber(string.sub(current, 1, space - 1)) or 0
  if string.sub(current, space + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    if tostring(term) == ARGV[3] then return {1, term} end
    return {3, term}
  end
  return {0, term}
end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], term .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {2, term}
"""
# KEYS: lease. ARGV: the full value. Deletes the lease only if it is still this value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Holder:
    """Who holds a session's lease, as its value says."""

    term: int
    host: str
    pid: int
    name: str | None = None  #: the holder's name for itself (a Tango device's), if any

    @classmethod
    def parse(cls, value: bytes | str) -> Holder | None:
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        parts = text.split(" ")
        try:
            return cls(int(parts[0]), parts[1], int(parts[2]), " ".join(parts[4:]) or None)
        except (IndexError, ValueError):
            return None  # not written by us: still somebody's

    def __str__(self) -> str:
        if self.pid == 0:
            return "a holder unknown (the lease key holds no writer's value: set by hand?)"
        where = f"pid {self.pid} on {self.host} (term {self.term})"
        return f"{self.name}, {where}" if self.name else where


@dataclass(frozen=True)
class LeaseStatistics:
    """A snapshot of a lease, as its process sees it."""

    term: int | None  #: the last term this process held
    held: bool  #: the term is not over (it may be in doubt: see valid_for)
    valid_for: float  #: seconds the lease can still be trusted without Redis
    lost: str | None  #: why the term is over
    #: why the last renewal failed (Redis unreachable) while the term goes on; None once
    #: a renewal succeeds
    unreachable: str | None = None


class SessionLease:
    """The right to write one session; at most one process holds it at a time."""

    def __init__(
        self,
        client: redis.Redis,
        session: str,
        prefix: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        name: str | None = None,
    ) -> None:
        """``name``: how the holder names itself to the others (a Tango device's name),
        beside its host and process id.

        Raises:
            ValueError: ``ttl`` is not a number of seconds of at least 0.1.
        """
        if not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:  # NaN fails too
            raise ValueError(
                f"lease ttl must be between {MIN_TTL:g} and {MAX_TTL:g} seconds, not {ttl!r}"
            )
        keys = Keys(prefix) if prefix is not None else Keys()
        self.client = client
        self.session = session
        self.ttl = float(ttl)
        #: Seconds between renewals (and between a standby's attempts to take over).
        self.interval = self.ttl / 5
        self.key = keys.session_writer(session)
        self._term_key = f"{self.key}:term"
        self.owner = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex[:12]}"
        if name:
            self.owner += f" {name}"
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._lock = Lock()  # guards the five fields below, across threads
        self._term: int | None = None
        self._valid_until = 0.0
        self._lost: str | None = None  # why this term is over
        self._unreachable: str | None = None  # why the last renewal failed
        self._settled = Event()  # set when the lease is renewed or lost; cleared by fence
        self._keeper: Thread | None = None
        self._stop_keeping = Event()
        #: Set once the current term is over (taken over, released, or given up).
        self.lost = Event()

    # -- the service's side ---------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (one attempt); True if this process holds it.

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis cannot be reached.
        """
        with self._lock:
            if self._term is not None and self._lost is None:
                return True
        sent = time.monotonic()
        status, term = self._claim(
            keys=[self.key, self._term_key], args=[self.owner, int(self.ttl * 1000), ""]
        )
        if status == 0:
            return False
        with self._lock:
            self._term, self._lost, self._unreachable = int(term), None, None
            self._valid_until = sent + TRUSTED * self.ttl
        self.lost.clear()
        self._settled.set()
        return True

    def holder(self) -> Holder | None:
        """Who holds the lease now (None: nobody).

        Raises:
            redis.ConnectionError, redis.TimeoutError: Redis cannot be reached.
        """
        value = self.client.get(self.key)
        if value is None:
            return None
        return Holder.parse(value) or Holder(0, "?", 0)

    def keep(self) -> None:
        """Renew the lease in a thread of its own until :meth:`release` or until it is lost
        (then :attr:`lost` is set)."""
        self._stop_keeping.clear()
        self._keeper = Thread(name=f"lease-{self.session}")
        self._keeper.start()
        self._keeper.spawn(self._keep)

    def release(self) -> None:
        """Stop renewing and give the lease back at once (if this process still holds it),
        so that a standby need not wait for it to expire. Idempotent.

        Nothing can be written under this lease afterwards: :meth:`fence` raises.
        """
        self._stop_keeping.set()
        if self._keeper is not None:
            self._keeper.stop(timeout=max(5.0, self.ttl))
            self._keeper = None
        with self._lock:
            token = self._token_locked()
        self._end("released")
        if token is not None:
            try:
                self._release(keys=[self.key], args=[token])
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                _log.warning(
                    "session %s: cannot give the writer lease back (%s): it expires in %g s",
                    self.session,
                    exc,
                    self.ttl,
                )

    def _keep(self) -> None:
        unreachable = False
        while not self._stop_keeping.wait(self.interval):
            sent = time.monotonic()
            with self._lock:
                term = self._term
                if term is None or self._lost is not None:
                    return
            try:
                status, new = self._claim(
                    keys=[self.key, self._term_key],
                    args=[self.owner, int(self.ttl * 1000), str(term)],
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not unreachable:
                    _log.warning(
                        "session %s: cannot renew the writer lease (%s): writing pauses when "
                        "it runs out, until Redis answers again",
                        self.session,
                        exc,
                    )
                unreachable = True
                with self._lock:
                    self._unreachable = str(exc) or type(exc).__name__
                continue
            except redis.RedisError as exc:  # the key made something else by hand...
                self._end(f"the lease cannot be renewed: {exc}")
                return
            if status in (2, 3) and int(new) != term + 1:
                # Taken anew, but not with the very next term: another service held it in
                # between, or Redis lost the count (restarted without its data). Either
                # way nobody can say that nothing was written meanwhile: ours is over.
                # Give back the one just taken (the service takes it again afresh).
                self._release(keys=[self.key], args=[f"{new} {self.owner}"])
                if int(new) > term + 1:
                    why = f"another service held the writer lease meanwhile (term {term + 1})"
                else:
                    why = "Redis lost the count of writer terms (restarted without its data?)"
                self._end(f"the lease ran out while Redis could not be reached, and {why}")
                return
            if status == 0:
                self._end(f"another service took the writer lease (term {int(new)})")
                return
            if unreachable or status in (2, 3):
                _log.warning(
                    "session %s: writer lease kept (term %d): writing goes on",
                    self.session,
                    int(new),
                )
            unreachable = False
            with self._lock:
                self._unreachable = None
                self._term = int(new)
                self._valid_until = sent + TRUSTED * self.ttl
            self._settled.set()

    def _end(self, why: str) -> None:
        with self._lock:
            if self._term is None or self._lost is not None:
                return
            self._lost = why
            self._valid_until = 0.0
        self._settled.set()
        self.lost.set()

    def _token_locked(self) -> str | None:
        if self._term is None or self._lost is not None:
            return None
        return f"{self._term} {self.owner}"

    # -- the writers' side -----------------------------------------------------------------

    @property
    def token(self) -> str:
        """The lease's value while this process holds it: Lua scripts that change the
        session's state in Redis check it first.

        Raises:
            LeaseLost: this process does not hold the lease.
        """
        with self._lock:
            token = self._token_locked()
            why = self._lost or "the writer lease is not held"
        if token is None:
            raise LeaseLost(f"session {self.session}: {why}")
        return token

    def held(self) -> bool:
        """True while the lease can be trusted without asking Redis (a local check)."""
        with self._lock:
            return (
                self._lost is None
                and self._term is not None
                and (time.monotonic() < self._valid_until)
            )

    def fence(self) -> None:
        """Return when writing is allowed: at once while the lease is valid; after a wait
        while it is in doubt (it ran out and Redis could not be asked).

        Raises:
            LeaseLost: this process no longer holds the lease (another service may write).
        """
        # The fast path, taken before nearly every write: two attribute reads and a clock
        # read, no lock (each read is atomic; _end zeroes _valid_until along with _lost).
        if time.monotonic() < self._valid_until and self._lost is None:
            return
        while True:
            # Clear first, then look: a renewal or a loss after the look sets it again.
            self._settled.clear()
            with self._lock:
                if self._lost is not None or self._term is None:
                    raise LeaseLost(
                        f"session {self.session}: {self._lost or 'the writer lease is not held'}"
                    )
                if time.monotonic() < self._valid_until:
                    return
            self._settled.wait(self.interval)

    def trusted(self) -> bool:
        """Whether writing is allowed at this instant, without waiting (False: in doubt, see
        :meth:`fence`).

        Raises:
            LeaseLost: this process no longer holds the lease.
        """
        if time.monotonic() < self._valid_until and self._lost is None:
            return True
        with self._lock:
            if self._lost is not None or self._term is None:
                raise LeaseLost(
                    f"session {self.session}: {self._lost or 'the writer lease is not held'}"
                )
            return time.monotonic() < self._valid_until

    def confirm(self) -> None:
        """Return once Redis says that this process holds the lease with time left (before
        the session's file is changed); wait while Redis cannot say, or while the lease
        is about to be renewed.

        Raises:
            LeaseLost: another service holds the lease, or this process gave it up.
        """
        while True:
            token = self.token
            try:
                pipe = self.client.pipeline()
                pipe.get(self.key)
                pipe.pttl(self.key)
                value, left = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                value, left = token, 0  # as if about to run out: wait for the keeper
            found = value.decode(errors="replace") if isinstance(value, bytes) else value
            if found == token and left >= (1 - TRUSTED) * self.ttl * 1000:
                self.fence()
                return
            # (self.token differs if this process renewed it meanwhile; a value of ours with
            # another term is a claim of the keeper, whose answer is on its way.)
            someone_else = found is not None and found.partition(" ")[2] != self.owner
            if someone_else and self.token == token:
                raise LeaseLost(f"session {self.session}: another service holds the lease")
            # Ran out in Redis, or about to: the keeper renews it, takes it again, or ends
            # the term; look again then (at the latest one renewal interval later).
            self._settled.clear()
            self._settled.wait(self.interval)

    def statistics(self) -> LeaseStatistics:
        """The lease as this process sees it."""
        with self._lock:
            return LeaseStatistics(
                term=self._term,
                held=self._lost is None and self._term is not None,
                valid_for=max(0.0, self._valid_until - time.monotonic()),
                lost=self._lost,
                unreachable=self._unreachable if self._lost is None else None,
            )

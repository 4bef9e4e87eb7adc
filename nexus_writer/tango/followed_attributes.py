"""FollowedAttributes: a NexusWriter's ``attributes`` property, as readings kept current by
change events, and the hand-over of its subscriptions from one life of the device (an
``Init``, a ``DevRestart``) to the next.

.. important::
   Made, started, retired and handed over in the device server's hub, like the device's
   life cycle; its callbacks run in that hub too (its CallbackScheduler has
   ``in_hub=True``), and its subscriptions are made and ended in the scheduler's
   subscriber threads. :meth:`FollowedAttributes.readings` may be called from any thread.

Not before the server is up
---------------------------
A life starts subscribing (:meth:`FollowedAttributes.start`) once its server has finished
starting (after a start, or a ``RestartServer``), not in ``init_device``: subscribing to an
attribute of a device of the same server while the server was still starting failed,
about one start in two of a server whose two NexusWriters follow each other's State (and
their own), either until Tango's next try
(``API_DeviceNotExported``) or for good (``API_ZmqFailed: Failed to create connection to
event! ... ZMQ message: Invalid argument``: libzmq refusing the endpoint it was given;
``test_two_writers_of_one_server_follow_each_others_state_from_its_start``).

Make before break
-----------------
cppTango keeps one ZMQ connection per device server that a process receives events from,
shared by every subscription to that server's devices, and closes it when the last of
them ends; the next subscription connects again. So a device's new life makes its
subscriptions first, while those of the lives before it still hold the connections, and
ends those only once its own have been tried (made, refused, or waiting for a device not
defined yet; :data:`HANDOVER_WAIT` seconds at most). A process that already receives an
event adds the new callback to it without touching ZMQ: an attribute followed before and
after an ``Init`` never loses its connection, and gets its first event as a new
subscription does.

The lives of one device name are handed over by one greenlet at a time, the newest first:
a life started while another was being tried supersedes it without waiting, and one
superseded before its turn never subscribes, so ``Init`` after ``Init`` costs no more than
one. A device deleted without coming back (``RestartServer`` after the device left the
database) has its subscriptions ended after :data:`UNCLAIMED`; at the server's shutdown
they are ended at once.

Each life reads only its own subscriptions' events: a late event of an older life, queued
in its scheduler, cannot overwrite a newer reading.

A second look
-------------
Tango does not promise the events of a subscription's first moments: ``subscribe_event``
reads the attribute for its first event, and a change pushed before the server's ZMQ
publisher has the new subscriber (a few milliseconds, more under load) reaches nobody.
A NexusWriter following its own State read INIT that way and kept it while ON for good
(``test_two_writers_of_one_server_follow_each_others_state_from_its_start``, once in a
whole suite's run). So each attribute is read once more :data:`SECOND_LOOK` seconds after
its first event, in a thread of the hub's pool (a read of this server's own device from
its hub would wait for the hub). The value read replaces the reading if it is newer and
differs from it (value or quality): an event lost is made up for, and a reading that
was right keeps the time of its change.

The server's end
----------------
Tango's cleanup, which follows the last ``delete_device`` of a shutdown, frees the process's
event consumers, which every proxy's destructor uses (``unsubscribe_all_events``). A
subscriber thread still in a call to a hung device (a proxy made, a subscription tried:
Tango's 3 s timeout, a few times over) that let go of its proxy in the middle of that
cleanup crashed the server (SIGSEGV, about one run in fifteen on Python 3.13 of a test
that stops a server following a hung device; now
``test_the_service_waits_for_its_tango_calls_before_tango_s_cleanup``). So the last
device to stop calls
:func:`end_all`: every subscription of the process ends and the call waits until no
thread of this module is in a Tango call (subscribing, unsubscribing, a second look's
read) before Tango's cleanup starts; if that takes longer than its bound, the server
exits rather than run that cleanup (``exit_watchdog.py``).

One of those calls can wait for the very ``delete_device`` that waits for it: Tango
deletes a device whose last request is still running once that request returns, in the
request's thread, and PyTango runs that ``delete_device`` in the hub. When the request is
a subscription's first read of the server's own device (a NexusWriter following its own
State), our subscriber thread waits for the hub, which waits for the thread. End_all sees
that in the threads' stacks and gives up at once, and the server exits as above.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import gevent
import gevent.event
import gevent.pool
import numpy as np
from tango import DeviceProxy, DevState, EventType, GreenMode

from nexus_writer.nexus.readings import NO_VALUE, Reading

from .callback_scheduler import CallbackScheduler
from .subscription import Subscription, describe

_log = logging.getLogger(__name__)

#: Seconds a new life waits for its subscriptions to be tried before it ends the older
#: lives' anyway (a device that does not answer: Tango's 3 s timeout, a few times over).
HANDOVER_WAIT = 10.0
#: Seconds a retired life waits for the device's next life before ending its subscriptions.
UNCLAIMED = 60.0
#: Seconds each ending (unsubscription, a callback returning) may take.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds after an attribute's first event when it is read once more (A second look).
SECOND_LOOK = 1.0
#: Seconds between two looks, at the server's end, at whether a call waits for the hub,
#: and how many looks in a row must see it.
WAITING_POLL = 0.1
WAITING_SEEN = 3


@dataclass
class _Lives:
    """The lives of one device name in this process, and the greenlet handing over."""

    #: started, not subscribing yet: the next to take over
    newest: FollowedAttributes | None = None
    #: the schedulers of the lives that subscribed, oldest first, the current one last
    held: list[CallbackScheduler] = field(default_factory=list)
    handing_over: gevent.Greenlet | None = None
    arrived: gevent.event.Event = field(default_factory=gevent.event.Event)  #: a newest
    closing: bool = False
    expiry: gevent.Greenlet | None = None


#: By device name (lower case); only the server's hub uses it.
_lives: dict[str, _Lives] = {}
#: Every scheduler made here whose shutdown has not completed yet: its threads may be in a
#: Tango call (the server's end waits for them). Only the server's hub uses it.
_schedulers: set[CallbackScheduler] = set()
#: The second looks' reads still in the hub's thread pool: a look's greenlet killed (its
#: life retired) leaves its read running. Only the server's hub uses it.
_reads: set[gevent.event.AsyncResult] = set()
#: The greenlets ending every subscription of a device name (_close) still running.
_closings: set[gevent.Greenlet] = set()
#: Set by end_all (the server ends): no second look starts a read after it. A life started
#: later (a test's, in a process that goes on) clears it.
_ending = False


def _shut_down(scheduler: CallbackScheduler) -> None:
    try:
        scheduler.shutdown(SHUTDOWN_TIMEOUT)
    except TimeoutError as exc:  # it goes on ending in its threads
        _log.warning("ending followed attributes' subscriptions: %s (still trying)", exc)
        return
    except Exception:  # a defect: not tried again (end_all would go round for ever)
        _log.exception("ending followed attributes' subscriptions")
    _schedulers.discard(scheduler)


def end_all(timeout: float) -> str | None:
    """The server's end, once its last device has stopped (the server's hub): end every
    subscription of this process, those of devices deleted earlier too, and wait until no
    thread of this module is in a Tango call (The server's end). None once none is;
    otherwise why not: ``timeout`` seconds have passed (a call to a hung device goes on),
    or one of those calls waits for this very hub."""
    global _ending
    _ending = True  # no second look reads from now on
    for key in list(_lives):
        lives = _lives.pop(key)
        if lives.expiry is not None:
            lives.expiry.kill()
        _spawn_close(lives)
    if not (_schedulers or _reads):
        return None
    _log.info(
        "waiting up to %s s for the followed attributes' Tango calls to return (%d "
        "subscription schedulers, %d reads) before Tango's cleanup",
        timeout,
        len(_schedulers),
        len(_reads),
    )
    ending = gevent.spawn(_end_the_rest)
    deadline = time.monotonic() + timeout
    seen_waiting = 0  # polls in a row: a call may wait for the hub an instant, not for ever
    try:
        while not ending.ready():
            seen_waiting = seen_waiting + 1 if _a_call_waits_for_the_hub() else 0
            if seen_waiting >= WAITING_SEEN:
                return (
                    "a followed attribute's Tango call waits for this shutdown (a first read "
                    "of this server's own device, whose deletion it carries)"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return (
                    f"the followed attributes' Tango calls did not return within {timeout} s "
                    "of the last device's stop"
                )
            ending.join(min(left, WAITING_POLL))
    finally:
        ending.kill(block=False)
    if ending.exception is not None:  # logged by gevent; the calls may still run
        return f"ending the followed attributes' subscriptions failed: {ending.exception!r}"
    return None


def _end_the_rest() -> None:
    # The closings first: each ends its hand-over before its schedulers (a scheduler shut
    # down under a hand-over that subscribes would fail it). Then those whose shutdown
    # timed out, again; then the second looks' reads.
    gevent.joinall(list(_closings))
    while _schedulers:
        _shut_down(next(iter(_schedulers)))
    gevent.wait(list(_reads))


def _a_call_waits_for_the_hub() -> bool:
    """Whether a thread of ours, in a Tango call, waits for PyTango to run something in the
    hub: at the shutdown, a device whose last request is still running is deleted (its
    ``delete_device`` run, in the hub) by the thread of that request once it returns; when
    that is our own read of the device's State, the thread waits for the ``delete_device``
    that waits for it. Seen in the threads' stacks: PyTango's executor waiting for a result
    (``GeventTask.result``) inside one of our calls."""
    for frame in sys._current_frames().values():
        waits: FrameType | None = frame
        in_executor = False
        while waits is not None:
            code = waits.f_code
            if code.co_name == "result" and code.co_filename.endswith("gevent_executor.py"):
                in_executor = True
            elif in_executor and code in _CALLERS:
                return True
            waits = waits.f_back
    return False


def _hand_over(lives: _Lives) -> None:
    """Make the newest life's subscriptions, then end the older lives' (a greenlet; one per
    device name at a time)."""
    while lives.newest is not None and not lives.closing:
        life, lives.newest = lives.newest, None
        lives.arrived.clear()
        tried = life._subscribe()
        if life._scheduler is not None:
            lives.held.append(life._scheduler)
        if tried is not None:
            gevent.wait([tried, lives.arrived], count=1, timeout=HANDOVER_WAIT)
        if lives.arrived.is_set():  # a newer life, or the end of them all
            continue  # the newer life ends this one once its own are tried
        current = [life._scheduler] if life._scheduler is not None else []
        older, lives.held = lives.held[: len(lives.held) - len(current)], current
        for scheduler in older:
            _shut_down(scheduler)


def _close(lives: _Lives) -> None:
    """End every subscription of a device name (a greenlet)."""
    lives.closing = True
    lives.arrived.set()
    if lives.handing_over is not None:
        lives.handing_over.join()
    held, lives.held = lives.held, []
    for scheduler in held:
        _shut_down(scheduler)


def _spawn_close(lives: _Lives) -> None:
    closing = gevent.spawn(_close, lives)
    _closings.add(closing)
    closing.link(_closings.discard)


def _expire(key: str) -> None:
    lives = _lives.pop(key, None)  # at once: a life started from now on starts afresh
    if lives is not None:
        _spawn_close(lives)


class FollowedAttributes:
    """The readings of the Tango attributes named by one device's ``attributes`` property.

    ``names`` are ``device/attribute`` (blank ones ignored). Each reading starts as
    ``no event received yet`` with quality NO_VALUE, or ``not device/attribute`` for a
    name without a device; change events replace it (an error event: NO_VALUE and the
    error). A missing or failing device costs its reading, never anything else.
    """

    def __init__(self, device: str, names: list[str]) -> None:
        self.device = device
        self._readings: dict[str, Reading] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._wanted: dict[str, tuple[str, str]] = {}
        for name in names:
            device_name, _, attribute_name = name.rpartition("/")
            if not device_name:
                self._readings[name] = Reading(None, NO_VALUE, None, "not device/attribute")
                continue
            self._readings[name] = Reading(None, NO_VALUE, None, "no event received yet")
            self._wanted[name] = (device_name, attribute_name)
        self._scheduler: CallbackScheduler | None = None  #: made by its turn to subscribe
        self._started = False
        self._second_looks = gevent.pool.Group()  #: one per attribute, after its first event
        self._looked_again: set[str] = set()

    def __bool__(self) -> bool:
        """Whether the property names any attribute."""
        return bool(self._readings)

    # -- any thread -----------------------------------------------------------------------

    def readings(self) -> dict[str, Reading]:
        """The readings now (a copy), with the subscription's error for those that never
        had an event (a device not defined, not running, a name Tango refuses...)."""
        readings = dict(self._readings)
        for name, subscription in list(self._subscriptions.items()):
            error, current = subscription.error, readings.get(name)
            never_read = current is not None and current.value is None and current.time is None
            if error is not None and never_read:
                readings[name] = Reading(None, NO_VALUE, None, f"not subscribed: {error}")
        return readings

    # -- the hub --------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the attributes from now on: this life takes over from the device's
        previous one (if any), in the background. Call it once the server has finished
        starting (the device does, once ``Util.is_svr_starting()`` is false); a second call
        does nothing."""
        if self._started:
            return
        self._started = True
        global _ending
        _ending = False
        lives = _lives.setdefault(self.device.lower(), _Lives())
        if lives.expiry is not None:
            lives.expiry.kill()
            lives.expiry = None
        lives.newest = self
        lives.arrived.set()
        if lives.handing_over is None or lives.handing_over.dead:
            lives.handing_over = gevent.spawn(_hand_over, lives)

    def retire(self, *, final: bool = False) -> None:
        """This life of the device ends (``delete_device``); returns at once. Its
        subscriptions go on until the device's next life has tried its own, or for
        :data:`UNCLAIMED` seconds; ``final`` (the server shuts down): they end now.
        Not waited for: ``Init`` holds the device's monitor, and an unsubscription can
        wait for a first read of a device of this server, which waits for that monitor."""
        self._second_looks.kill(block=False)
        key = self.device.lower()
        lives = _lives.get(key)
        if lives is None:
            return
        if final:
            del _lives[key]
            if lives.expiry is not None:
                lives.expiry.kill()
            _spawn_close(lives)
        elif lives.expiry is None:
            lives.expiry = gevent.spawn_later(UNCLAIMED, _expire, key)

    def _subscribe(self) -> gevent.Greenlet | None:
        """Subscribe (this life's turn, in the hand-over greenlet); a greenlet that ends once
        every subscription has been tried, or None without any."""
        if not self._wanted:
            return None
        scheduler = self._scheduler = CallbackScheduler(in_hub=True)
        _schedulers.add(scheduler)
        for name, (device, attribute) in self._wanted.items():
            self._subscriptions[name] = scheduler.subscribe(
                device, attribute, EventType.CHANGE_EVENT, self._on_event, name
            )
        return gevent.spawn(self._wait_tried, list(self._subscriptions.values()))

    @staticmethod
    def _wait_tried(subscriptions: list[Subscription]) -> None:
        deadline = time.monotonic() + HANDOVER_WAIT
        for subscription in subscriptions:
            subscription.wait_attempted(max(0.0, deadline - time.monotonic()))

    def _on_event(self, event: Any, name: str) -> None:
        """A change event of attribute ``name`` (in the hub, from this life's scheduler)."""
        if event.err:
            first = event.errors[0]
            why = f"{first.reason}: {str(first.desc).strip()}"
            self._readings[name] = Reading(None, NO_VALUE, None, why)
            return
        self._readings[name] = _reading(event.attr_value)
        if name not in self._looked_again:
            self._looked_again.add(name)
            self._second_looks.spawn(self._look_again, name)

    def _look_again(self, name: str) -> None:
        """Read ``name`` once more after :data:`SECOND_LOOK` seconds, in the hub's thread
        pool, and keep the value if it is newer than the reading (A second look)."""
        gevent.sleep(SECOND_LOOK)
        if _ending:  # a look spawned after its life retired: no read while Tango ends
            return
        device, attribute = self._wanted[name]
        result = gevent.get_hub().threadpool.spawn(_read, device, attribute)
        _reads.add(result)
        result.rawlink(_reads.discard)
        value = result.get()
        if isinstance(value, str):  # the events say why, if it lasts
            _log.debug("%s: second look at %s failed: %s", self.device, name, value)
            return
        read, current = _reading(value), self._readings[name]
        newer = read.time is not None and (current.time is None or read.time > current.time)
        if newer and not (_same(read.value, current.value) and read.quality == current.quality):
            _log.info("%s: %s read as %r, which no event had said", self.device, name, read.value)
            self._readings[name] = read


def _read(device: str, attribute: str) -> Any:
    """``attribute`` of ``device`` read now (in a thread of the pool, not the hub), or why
    it could not be: an exception raised in the pool would be printed with its traceback."""
    try:
        proxy = DeviceProxy(device, green_mode=GreenMode.Synchronous)
        return proxy.read_attribute(attribute)
    except Exception as exc:  # DevFailed: the device not running, hung, not defined...
        return describe(exc)


#: Our functions that call Tango from a thread other than the hub's.
_CALLERS = frozenset({Subscription.run.__code__, Subscription.release.__code__, _read.__code__})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _reading(value: Any) -> Reading:
    """A Reading of Tango's ``DeviceAttribute``."""
    quality = str(value.quality).rsplit(".", 1)[-1].removeprefix("ATTR_")
    reading = value.value
    if isinstance(reading, DevState):  # a State attribute: stored by name ("ON")
        reading = str(reading)
    return Reading(reading, quality, value.time.totime())

"""FollowedAttributes: a NexusWriter's ``attributes`` property, as readings kept current by
change events, and the hand-over of its subscriptions from one life of the device (an
``Init``, a ``DevRestart``) to the next.

.. important::
   Made, retired and handed over in the device server's hub, like the device's life
   cycle; its callbacks run in that hub too (its CallbackScheduler has ``in_hub=True``),
   and its subscriptions are made and ended in the scheduler's subscriber threads.
   :meth:`FollowedAttributes.readings` may be called from any thread.

Make before break
-----------------
cppTango keeps one ZMQ connection per device server that a process receives events from,
shared by every subscription to that server's devices, and closes it when the last of
them ends; the next subscription connects again. An ``Init`` that ended its subscriptions
and then made them again, right away, did that for every server it follows. When one of
them is the device's own server (the device follows its own State, or an attribute of
another NexusWriter of the server), three ``Init`` in a row left, in a few runs of the
Tango tests in ten on a loaded 2-core machine, subscriptions that delivered nothing but
error events (``API_ZmqFailed: Failed to create connection to event! ... ZMQ message:
Invalid argument``: libzmq refusing the endpoint it was given) for good, even with each
ending waited for before the next making.

So a device's new life makes its subscriptions first, while those of its old life still
hold the connections, and ends the old ones only once the new ones are made (or failed,
or :data:`HANDOVER_WAIT` has passed). A process that already receives an event adds the
new callback to it without touching ZMQ: an attribute followed before and after an
``Init`` never loses its connection, and gets its first event as a new subscription does.
The hand-overs of one device name run one after the other, across ``Init`` and restarts
(:data:`_retired`, keyed by the device's name). A device deleted without coming back
(``RestartServer`` after the device was removed from the database) has its subscriptions
ended after :data:`UNCLAIMED`; at the server's shutdown they are ended at once.

Each new life reads only its own subscriptions' events: a late event of the old life,
queued in the old scheduler, cannot overwrite a newer reading.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import gevent
from tango import DevState, EventType

from nexus_writer.nexus.readings import NO_VALUE, Reading

from .callback_scheduler import CallbackScheduler
from .subscription import Subscription, SubscriptionError

_log = logging.getLogger(__name__)

#: Seconds a new life waits for its subscriptions to be made before it ends the old
#: life's anyway (a device that does not answer: Tango's 3 s timeout, a few times over).
HANDOVER_WAIT = 10.0
#: Seconds a retired life waits for the device's next life before ending its subscriptions.
UNCLAIMED = 60.0
#: Seconds each ending (unsubscription, a callback returning) may take.
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class _Retired:
    """A device's life that ended, waiting for its next: the greenlet that was handing
    over to it (joined first) and its scheduler, still subscribed."""

    handover: gevent.Greenlet | None
    scheduler: CallbackScheduler | None
    expiry: gevent.Greenlet | None = None


#: Retired lives by device name (lower case); only the server's hub uses it.
_retired: dict[str, _Retired] = {}


def _shut_down(scheduler: CallbackScheduler | None, after: gevent.Greenlet | None) -> None:
    """End ``scheduler``'s subscriptions once ``after`` has ended (a greenlet's body)."""
    if after is not None:
        after.join()
    if scheduler is None:
        return
    try:
        scheduler.shutdown(SHUTDOWN_TIMEOUT)
    except TimeoutError as exc:  # it goes on ending in its threads
        _log.warning("ending the subscriptions of a previous Init: %s", exc)


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
        self._scheduler = CallbackScheduler(in_hub=True) if self._wanted else None
        previous = _retired.pop(device.lower(), None)
        if previous is not None and previous.expiry is not None:
            previous.expiry.kill()
        self._handover: gevent.Greenlet | None = None
        if self._scheduler is not None or previous is not None:
            self._handover = gevent.spawn(self._take_over, previous)

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

    def retire(self, *, final: bool = False) -> None:
        """This life of the device ends (``delete_device``); returns at once. Its
        subscriptions go on until the device's next life has made its own, or
        :data:`UNCLAIMED` seconds; ``final`` (the server shuts down): they end now.
        Not waited for: ``Init`` holds the device's monitor, and an unsubscription can
        wait for a first read of a device of this server, which waits for that monitor."""
        key = self.device.lower()
        if final:
            gevent.spawn(_shut_down, self._scheduler, self._handover)
            return
        retired = _retired[key] = _Retired(self._handover, self._scheduler)
        retired.expiry = gevent.spawn_later(UNCLAIMED, self._expire, key, retired)

    @staticmethod
    def _expire(key: str, retired: _Retired) -> None:
        if _retired.get(key) is retired:
            del _retired[key]
            _shut_down(retired.scheduler, retired.handover)

    def _take_over(self, previous: _Retired | None) -> None:
        """Make this life's subscriptions, then end the previous life's (a greenlet)."""
        if previous is not None and previous.handover is not None:
            previous.handover.join()
        if self._scheduler is not None:
            for name, (device, attribute) in self._wanted.items():
                self._subscriptions[name] = self._scheduler.subscribe(
                    device, attribute, EventType.CHANGE_EVENT, self._on_event, name
                )
            deadline = time.monotonic() + HANDOVER_WAIT
            for subscription in self._subscriptions.values():
                # A subscription not made in time, or refused: its reading says why, and
                # it goes on trying if it can.
                with contextlib.suppress(TimeoutError, SubscriptionError):
                    subscription.wait(max(0.0, deadline - time.monotonic()))
        if previous is not None:
            _shut_down(previous.scheduler, None)

    def _on_event(self, event: Any, name: str) -> None:
        """A change event of attribute ``name`` (in the hub, from this life's scheduler)."""
        if event.err:
            first = event.errors[0]
            why = f"{first.reason}: {str(first.desc).strip()}"
            self._readings[name] = Reading(None, NO_VALUE, None, why)
            return
        value = event.attr_value
        quality = str(value.quality).rsplit(".", 1)[-1].removeprefix("ATTR_")
        reading = value.value
        if isinstance(reading, DevState):  # a State attribute: stored by name ("ON")
            reading = str(reading)
        self._readings[name] = Reading(reading, quality, value.time.totime())

"""Subscription: one Tango event subscription of a CallbackScheduler, with its own proxy.

.. important::
   A subscription is made, retried and ended in one of its scheduler's subscriber
   :class:`~sync_primitives.Thread` s, never in the caller's thread, so that no caller and no
   event callback waits for Tango's network calls. Its Tango callback, :meth:`push_event`,
   runs in Tango's event consumer thread (or in the subscriber thread, for the event that
   cppTango delivers while subscribing): it only queues. ``state``, ``error``, ``wait`` and
   ``statistics`` may be used from any thread.

Seed 000's pitfalls 4, 5 and 6 are answered here:

* The ``DeviceProxy`` belongs to the subscription, made in a subscriber thread with
  ``GreenMode.Synchronous`` whatever the program's default, kept until
  :meth:`CallbackScheduler.unsubscribe` or :meth:`CallbackScheduler.shutdown`, and then
  unsubscribed explicitly before it is let go: the garbage collector never decides when an
  event stream ends.
* A device not yet defined in the database (``DB_DeviceNotDefined`` anywhere in the error
  stack) is tried again every ``retry_period`` until it appears, the subscription is ended,
  or the scheduler is shut down. Subscriptions are ``EventSubMode.Stateless`` by default:
  a device defined but not running (or an attribute it does not have yet) is subscribed
  to at once, and Tango delivers error events, which reach the callbacks, until it can
  deliver values. ``EventSubMode.Sync`` makes such a subscription fail instead.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tango
from gevent.monkey import get_original

from sync_primitives import Event

if TYPE_CHECKING:
    from .callback_scheduler import CallbackScheduler

_log = logging.getLogger(__name__)
#: Held by the subscriptions made before the process has its event consumer (a native
#: lock: subscriber threads are OS threads, also under gevent's monkey-patching).
_first_subscription = get_original("_thread", "allocate_lock")()
_consumer_made = False  #: a subscription of the process has succeeded


class SubscriptionState(enum.Enum):
    PENDING = "pending"  #: being made, or waiting for the device to be defined
    SUBSCRIBED = "subscribed"
    FAILED = "failed"  #: Tango refused it for a reason other than an undefined device
    ENDED = "ended"  #: unsubscribed, or the scheduler was shut down


class SubscriptionError(RuntimeError):
    """A subscription failed or ended before it was made; the message says why."""


@dataclass(frozen=True)
class SubscriptionStatistics:
    stream: str
    queue: str
    state: str
    attempts: int  #: DeviceProxy / subscribe_event attempts so far
    error: str | None  #: the last error, for FAILED (and PENDING while retrying)
    events: int  #: events Tango delivered to this subscription, errors included
    error_events: int  #: of which error events (``event.err``)


def alone_while_no_consumer(subscribe: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """``subscribe(*args, **kwargs)``, one call at a time until the process has its event
    consumer: cppTango makes it at the process's first subscription, and two threads that
    subscribe at once then can fail (``API_InvalidArgs: Could not find event consumer for
    ptr``; 10 processes in 20 whose first act was 8 subscriptions at once, on this
    machine). Once one has succeeded, the consumer exists and the calls run side by side.
    (Not ``ApiUtil.instance().is_zmq_event_consumer_created()``: called by subscriber
    threads during a ``RestartServer`` of the device server they run in, it crashed the
    process now and then.)"""
    global _consumer_made
    if _consumer_made:
        return subscribe(*args, **kwargs)
    with _first_subscription:
        event_id = subscribe(*args, **kwargs)
        _consumer_made = True
        return event_id


def stream_name(device: str, attribute: str, event_type: tango.EventType) -> str:
    """``"<device>/<attribute>.<event type>"`` in lower case, e.g. ``foo/bar/hw/mode.change``
    (the event type without ``_EVENT``; the same name as the publisher's in the monitor)."""
    kind = str(event_type.name).lower().removesuffix("_event")
    return f"{device.lower()}/{attribute.lower()}.{kind}"


def is_not_defined(error: tango.DevFailed) -> bool:
    """The device is not (yet) in the database: ``DB_DeviceNotDefined`` anywhere in the stack."""
    return any(getattr(item, "reason", "") == "DB_DeviceNotDefined" for item in error.args)


def describe(error: BaseException) -> str:
    """A DevFailed as ``reason: desc`` of its first item (the root cause), else ``str``."""
    if isinstance(error, tango.DevFailed) and error.args:
        first = error.args[0]
        return f"{first.reason}: {str(first.desc).strip()}"
    return f"{type(error).__name__}: {error}"


def event_time(event: Any) -> float:
    """When ``event`` happened, epoch seconds: the value's time stamp, else its reception."""
    value = getattr(event, "attr_value", None)
    stamp = getattr(value, "time", None) if value is not None else None
    if stamp is None:
        stamp = getattr(event, "reception_date", None)
    return float(stamp.totime()) if stamp is not None else time.time()


class Subscription:
    """A handle on one subscription: its state, its callbacks and its statistics."""

    def __init__(
        self,
        scheduler: CallbackScheduler,
        *,
        device: str,
        attribute: str,
        event_type: tango.EventType,
        queue: str,
        sub_mode: tango.EventSubMode,
        retry_period: float,
    ) -> None:
        self.device = device
        self.attribute = attribute
        self.event_type = event_type
        self.stream = stream_name(device, attribute, event_type)
        self.queue = queue
        self.sub_mode = sub_mode
        self.retry_period = retry_period
        #: the callbacks an event is queued with (replaced whole, under the scheduler's lock)
        self.callbacks: tuple[Callable[[Any], object], ...] = ()
        self._scheduler = scheduler
        self._state = SubscriptionState.PENDING
        self._error: str | None = None
        self._attempts = 0
        self._events = self._error_events = 0
        self._proxy: tango.DeviceProxy | None = None
        self._event_id: int | None = None
        self._settled = Event()  #: set when no longer PENDING
        self._attempted = Event()  #: set when the first attempt has returned, or at end()
        self._ended = Event()  #: set by end(): stops the retries

    # -- any thread ---------------------------------------------------------------------

    @property
    def state(self) -> SubscriptionState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the subscription is made.

        Raises:
            TimeoutError: still pending after ``timeout`` seconds (it goes on trying).
            SubscriptionError: it failed, or ended first; the message says why.
        """
        if not self._settled.wait(timeout):
            raise TimeoutError(
                f"subscription to {self.stream} still pending after {timeout} s"
                + (f" (last error: {self._error})" if self._error else "")
            )
        if self._state is not SubscriptionState.SUBSCRIBED:
            raise SubscriptionError(
                f"subscription to {self.stream} {self._state.value}"
                + (f": {self._error}" if self._error else "")
            )

    def wait_attempted(self, timeout: float | None = None) -> bool:
        """Wait until the first attempt to subscribe has returned: the subscription made,
        failed or ended, or its device not defined yet (tried again every ``retry_period``
        from then on). True if it has, False after ``timeout`` seconds."""
        return self._attempted.wait(timeout)

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            stream=self.stream,
            queue=self.queue,
            state=self._state.value,
            attempts=self._attempts,
            error=self._error,
            events=self._events,
            error_events=self._error_events,
        )

    def __repr__(self) -> str:
        return f"<Subscription {self.stream} {self._state.value}>"

    # -- Tango's event consumer thread --------------------------------------------------

    def push_event(self, event: Any) -> None:
        """The Tango callback: queue the event with this subscription's callbacks."""
        self._events += 1
        if getattr(event, "err", False):
            self._error_events += 1
        self._scheduler.enqueue(self, event, event_time(event))

    # -- a subscriber thread ------------------------------------------------------------

    def run(self) -> None:
        """Make the proxy and subscribe, retrying while the device is not defined."""
        while not self._ended.is_set():
            self._attempts += 1
            try:
                proxy = tango.DeviceProxy(self.device, green_mode=tango.GreenMode.Synchronous)
                event_id = alone_while_no_consumer(
                    proxy.subscribe_event,
                    self.attribute,
                    self.event_type,
                    self.push_event,
                    sub_mode=self.sub_mode,
                    green_mode=tango.GreenMode.Synchronous,
                )
            except tango.DevFailed as error:
                self._error = describe(error)
                self._attempted.set()
                if not is_not_defined(error):
                    self._settle(SubscriptionState.FAILED)
                    _log.error("subscription to %s failed: %s", self.stream, self._error)
                    return
                _log.info(
                    "%s is not defined in the database yet; trying again in %s s",
                    self.device,
                    self.retry_period,
                )
                self._ended.wait(self.retry_period)
                continue
            except Exception as error:  # a bad event type or attribute name, say
                self._error = describe(error)
                self._settle(SubscriptionState.FAILED)
                _log.error("subscription to %s failed: %s", self.stream, self._error)
                return
            self._proxy, self._event_id = proxy, event_id
            if self._ended.is_set():  # ended while the call was in flight
                self.release()
                return
            self._error = None
            self._settle(SubscriptionState.SUBSCRIBED)
            return

    def end(self) -> None:
        """Stop retrying; :meth:`release` does the rest (in a subscriber thread)."""
        self._ended.set()
        self._settle(SubscriptionState.ENDED)

    def release(self) -> None:
        """Unsubscribe and let go of the proxy. Idempotent."""
        proxy, event_id = self._proxy, self._event_id
        self._proxy = self._event_id = None
        if proxy is not None and event_id is not None:
            try:
                proxy.unsubscribe_event(event_id)
            except tango.DevFailed as error:  # the device went away: nothing to end
                _log.info("unsubscribing from %s: %s", self.stream, describe(error))
        self._settle(SubscriptionState.ENDED)

    def _settle(self, state: SubscriptionState) -> None:
        if self._state in (SubscriptionState.PENDING, SubscriptionState.SUBSCRIBED):
            self._state = state
        self._settled.set()
        self._attempted.set()

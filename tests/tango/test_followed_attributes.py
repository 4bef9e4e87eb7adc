"""FollowedAttributes in this process's hub, against a real device server: the readings,
and the hand-over of the subscriptions from one life of a device to the next."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import tango
from tango.gevent_executor import GeventTask

from nexus_writer.tango import SubscriptionState
from nexus_writer.tango import followed_attributes as module
from nexus_writer.tango.callback_scheduler import CallbackScheduler
from nexus_writer.tango.embedded import DeviceServer, EmbeddedTangoDatabase
from nexus_writer.tango.followed_attributes import FollowedAttributes
from tests.conftest import wait_until
from tests.tango.conftest import DEVICES, server_env
from tests.tango.test_subscriptions import SUBSCRIBED, our_callbacks

MODE = "test/hw/1/mode"  # pushed on change only: quiet unless a Scan runs
NOBODY = "test/nobody/1/current"  # a device not defined
UNPUSHED = "test/hw/2/unpushed"  # its reads so far: changed by each read, never pushed
_names = itertools.count(1)


@pytest.fixture
def device(hw_server: DeviceServer) -> Iterator[str]:
    """A device name of its own (the hand-overs are kept by name, for the process)."""
    name = f"test/follower/{next(_names)}"
    yield name
    lives = module._lives.pop(name, None)
    if lives is not None:  # what the test left: ended now
        module._close(lives)
    wait_until(lambda: callbacks_on(MODE) == 0, "the test's subscriptions ended", SUBSCRIBED)


def callbacks_on(attribute: str) -> int:
    """Tango's count of this process's callbacks on ``attribute``'s change events."""
    suffix = f"/{attribute}.idl5_change"
    return sum(e["callback_count"] for n, e in our_callbacks().items() if n.endswith(suffix))


def started(device: str, names: list[str]) -> FollowedAttributes:
    life = FollowedAttributes(device, names)
    life.start()
    return life


def read(followed: FollowedAttributes, name: str) -> object:
    return followed.readings()[name].value


def follows_a_scan(followed: FollowedAttributes) -> None:
    """A Scan of test/hw/1 changes its mode: wait for ``followed`` to read a mode of then
    (SCANNING, or IDLE again once the scan is over, a second later)."""
    before = time.time()
    tango.DeviceProxy("test/hw/1").Scan()
    wait_until(
        lambda: (followed.readings()[MODE].time or 0) > before, "the Scan's mode", SUBSCRIBED
    )


def states(life: FollowedAttributes) -> list[SubscriptionState]:
    return [subscription.state for subscription in life._subscriptions.values()]


def test_readings_start_with_why_they_are_empty_then_follow_the_events(device: str) -> None:
    followed = FollowedAttributes(device, [MODE, "nodevice", NOBODY])
    assert followed.readings()[MODE].error == "no event received yet"
    assert followed.readings()["nodevice"].error == "not device/attribute"
    followed.start()
    followed.start()  # once only
    try:
        wait_until(lambda: read(followed, MODE) is not None, "the mode read", SUBSCRIBED)
        assert callbacks_on(MODE) == 1
        follows_a_scan(followed)
        missing = followed.readings()[NOBODY]
        assert missing.quality == "NO_VALUE" and missing.value is None
        assert "not subscribed: DB_DeviceNotDefined" in str(missing.error)
    finally:
        followed.retire(final=True)


def test_a_life_not_started_subscribes_to_nothing(device: str) -> None:
    """Until the server has finished starting, a device's life waits (start())."""
    followed = FollowedAttributes(device, [MODE])
    assert device not in module._lives  # nothing to do: no greenlet, no scheduler
    assert followed._subscriptions == {} and followed._scheduler is None
    followed.retire()  # nothing to hand over
    assert device not in module._lives


def test_a_new_life_subscribes_before_the_old_one_unsubscribes(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make before break: when the old life's subscriptions start ending, the new life's are
    made, and Tango counts both callbacks on the event: its connection never closes."""
    seen_at_shutdown: list[tuple[list[SubscriptionState], int]] = []
    shut_down = module._shut_down

    def watched(scheduler: CallbackScheduler) -> None:
        seen_at_shutdown.append((states(new), callbacks_on(MODE)))
        shut_down(scheduler)

    old = started(device, [MODE])
    wait_until(lambda: read(old, MODE) is not None, "the old life's first reading", SUBSCRIBED)
    assert callbacks_on(MODE) == 1
    monkeypatch.setattr(module, "_shut_down", watched)
    old.retire()
    new = started(device, [MODE])
    try:
        wait_until(lambda: bool(seen_at_shutdown), "the old life ended", SUBSCRIBED)
        assert seen_at_shutdown == [([SubscriptionState.SUBSCRIBED], 2)]
        wait_until(lambda: callbacks_on(MODE) == 1, "only the new life's callback", SUBSCRIBED)
        assert read(new, MODE) is not None  # its own first event, as any subscription's
        follows_a_scan(new)
    finally:
        new.retire(final=True)
    wait_until(lambda: callbacks_on(MODE) == 0, "every callback ended", SUBSCRIBED)


def test_a_change_whose_event_was_lost_is_read_at_the_second_look(device: str) -> None:
    """Tango does not promise a subscription's first events: a change pushed before the
    server's publisher had the new subscriber reached nobody, and the reading stayed as
    subscribe_event read it. ``unpushed`` is that change: it has changed after the
    subscription's own read, and no event will ever say so."""
    followed = started(device, [UNPUSHED])
    try:
        wait_until(lambda: read(followed, UNPUSHED) is not None, "the first event", SUBSCRIBED)
        first = followed.readings()[UNPUSHED]
        wait_until(
            lambda: read(followed, UNPUSHED) != first.value,
            "the second look's value",
            module.SECOND_LOOK + SUBSCRIBED,
        )
        second = followed.readings()[UNPUSHED]
        assert isinstance(first.value, int) and second.value > first.value
        assert second.quality == "VALID" and second.time is not None
        assert first.time is not None and second.time > first.time
    finally:
        followed.retire(final=True)


def test_a_device_not_defined_does_not_hold_the_hand_over(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription waiting for its device to be defined has been tried: the old life
    ends at once, not after HANDOVER_WAIT (each Init in a row cost 10 s more)."""
    monkeypatch.setattr(module, "HANDOVER_WAIT", 600.0)
    lives = [started(device, [MODE, NOBODY])]
    wait_until(lambda: read(lives[0], MODE) is not None, "the first life's reading", SUBSCRIBED)
    for _ in range(3):
        lives[-1].retire()
        lives.append(started(device, [MODE, NOBODY]))
        wait_until(
            lambda: (
                states(lives[-1])[:1] == [SubscriptionState.SUBSCRIBED] and callbacks_on(MODE) == 1
            ),
            "the new life subscribed, the old one ended",
            SUBSCRIBED,
        )
        assert states(lives[-1])[1] == SubscriptionState.PENDING  # still trying NOBODY
    follows_a_scan(lives[-1])
    lives[-1].retire(final=True)


def test_a_new_life_without_attributes_ends_the_old_subscriptions(device: str) -> None:
    old = started(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire()
    new = started(device, [])
    assert not new and new.readings() == {}
    wait_until(lambda: callbacks_on(MODE) == 0, "the old subscription ended", SUBSCRIBED)
    assert module._lives[device].held == []


def test_a_life_not_followed_by_another_ends_its_subscriptions_after_a_while(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device deleted for good (RestartServer after it left the database) does not keep
    its subscriptions for the rest of the process."""
    monkeypatch.setattr(module, "UNCLAIMED", 0.2)
    old = started(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire()
    assert callbacks_on(MODE) == 1  # kept for the next life
    wait_until(lambda: callbacks_on(MODE) == 0, "ended, unclaimed", SUBSCRIBED)
    assert device not in module._lives


def test_the_server_shutdown_ends_the_subscriptions_at_once(device: str) -> None:
    old = started(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire(final=True)
    assert device not in module._lives
    wait_until(lambda: callbacks_on(MODE) == 0, "ended", SUBSCRIBED)


def test_lives_superseded_before_their_turn_never_subscribe(device: str) -> None:
    """Inits in a row, faster than the hand-over: only the newest life subscribes."""
    lives = [started(device, [MODE])]
    for _ in range(2):
        lives[-1].retire()
        lives.append(started(device, [MODE]))
    try:
        wait_until(
            lambda: states(lives[-1]) == [SubscriptionState.SUBSCRIBED] and callbacks_on(MODE) == 1,
            "the last life subscribed",
            SUBSCRIBED,
        )
        assert [life._subscriptions for life in lives[:-1]] == [{}, {}]
        follows_a_scan(lives[-1])
    finally:
        lives[-1].retire(final=True)


def test_the_server_s_end_ends_every_life_and_waits_for_their_calls(device: str) -> None:
    """end_all, when the server's last device stops: a life retired and kept for the next
    one, a life that follows and one subscription still waiting for its device to be
    defined are all ended, their proxies gone, when it returns."""
    other = f"test/follower/{next(_names)}"
    kept = started(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    kept.retire()
    live = started(other, [MODE, NOBODY])
    wait_until(
        lambda: states(live)[:1] == [SubscriptionState.SUBSCRIBED] and callbacks_on(MODE) == 2,
        "both lives subscribed",
        SUBSCRIBED,
    )
    assert states(live)[1] == SubscriptionState.PENDING  # NOBODY: tried again and again
    assert module.end_all(SUBSCRIBED) is None
    assert callbacks_on(MODE) == 0  # at once: end_all waited
    assert device not in module._lives and other not in module._lives
    assert not module._schedulers and not module._closings and not module._reads
    assert states(live) == [SubscriptionState.ENDED, SubscriptionState.ENDED]


@pytest.mark.timeout(120)
def test_the_server_s_end_gives_up_on_the_calls_to_a_hung_device(
    tango_database: EmbeddedTangoDatabase, device: str
) -> None:
    """A device that does not answer (its server stopped) holds a new life's subscription
    in Tango calls (its 3 s timeout, more than once): end_all returns why after its
    timeout with the calls still running (saying so), None once they have returned."""
    tango_database.add_device("rogue_devices/hung", "HwDevice", "test/hung/1")
    position = "test/hung/1/position"
    with tango_database.start_server(
        DEVICES, "hung", env=server_env(POSITION_PERIOD="0.05")
    ) as hung:
        assert hung.pid is not None
        old = started(device, [position])
        wait_until(lambda: read(old, position) is not None, "the first event", SUBSCRIBED)
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            old.retire()
            new = started(device, [position])
            wait_until(
                lambda: any(s.statistics().attempts for s in new._subscriptions.values()),
                "the new life subscribing",
                SUBSCRIBED,
            )
            why = module.end_all(0.5)
            assert why is not None and "did not return within 0.5 s" in why
            assert module._schedulers  # still in a call to the hung device
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert module.end_all(60.0) is None
        assert not module._schedulers and not module._reads


def test_a_call_waiting_for_the_hub_is_seen_in_its_thread_s_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's end must not wait for a call of ours that waits for the hub: PyTango's
    executor holding one of our Tango-calling functions (here a stand-in) waiting for a
    result that only the hub can give."""
    task = GeventTask(lambda: None)
    waiting = threading.Event()

    def calls_tango() -> None:  # a stand-in for Subscription.run, caught in PyTango's wait
        waiting.set()
        task.result()

    monkeypatch.setattr(module, "_CALLERS", frozenset({calls_tango.__code__}))
    assert not module._a_call_waits_for_the_hub()
    thread = threading.Thread(target=calls_tango)
    thread.start()
    try:
        assert waiting.wait(SUBSCRIBED)
        wait_until(module._a_call_waits_for_the_hub, "the wait seen", SUBSCRIBED)
    finally:
        task.run()  # the hub's part: the result is there
        thread.join(SUBSCRIBED)
    assert not thread.is_alive() and not module._a_call_waits_for_the_hub()


def test_no_second_look_reads_once_the_server_ends(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look spawned by a retired life's late first event, waiting out its second when
    end_all runs, must not start a read during Tango's cleanup (a proxy made and dropped
    then is the crash end_all prevents)."""
    # An attribute no other test follows: an earlier test's life may still have a second
    # look pending (they read MODE a second after its first event), and it would read
    # through the patched _read too.
    attribute = "test/hw/1/read_by_this_test_only"
    reads: list[str] = []
    monkeypatch.setattr(module, "_ending", False)
    monkeypatch.setattr(module, "SECOND_LOOK", 0.0)

    def read_now(device: str, name: str) -> str:
        if f"{device}/{name}" == attribute:
            reads.append(attribute)
        return "not read"

    monkeypatch.setattr(module, "_read", read_now)
    life = FollowedAttributes(device, [attribute])
    life._look_again(attribute)  # before the end: it reads
    assert reads == [attribute]
    assert module.end_all(SUBSCRIBED) is None
    life._look_again(attribute)
    assert reads == [attribute] and not module._reads

"""FollowedAttributes in this process's hub, against a real device server: the readings,
and the hand-over of the subscriptions from one life of a device to the next."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import tango

from nexus_writer.tango import SubscriptionState
from nexus_writer.tango import followed_attributes as module
from nexus_writer.tango.embedded import DeviceServer
from nexus_writer.tango.followed_attributes import FollowedAttributes
from tests.conftest import wait_until
from tests.tango.test_subscriptions import SUBSCRIBED, our_callbacks

MODE = "test/hw/1/mode"  # pushed on change only: quiet unless a Scan runs
_names = itertools.count(1)


@pytest.fixture
def device(hw_server: DeviceServer) -> Iterator[str]:
    """A device name of its own (the hand-overs are kept by name, for the process)."""
    name = f"test/follower/{next(_names)}"
    yield name
    retired = module._retired.pop(name, None)
    if retired is not None:  # what the test left: ended now
        module._shut_down(retired.scheduler, retired.handover)
    wait_until(lambda: callbacks_on(MODE) == 0, "the test's subscriptions ended", SUBSCRIBED)


def callbacks_on(attribute: str) -> int:
    """Tango's count of this process's callbacks on ``attribute``'s change events."""
    suffix = f"/{attribute}.idl5_change"
    return sum(e["callback_count"] for n, e in our_callbacks().items() if n.endswith(suffix))


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


def test_readings_start_with_why_they_are_empty_then_follow_the_events(device: str) -> None:
    followed = FollowedAttributes(device, [MODE, "nodevice", "test/nobody/1/current"])
    try:
        assert followed.readings()["nodevice"].error == "not device/attribute"
        wait_until(lambda: read(followed, MODE) == "IDLE", "the mode read", SUBSCRIBED)
        follows_a_scan(followed)
        missing = followed.readings()["test/nobody/1/current"]
        assert missing.quality == "NO_VALUE" and missing.value is None
        assert "not subscribed: DB_DeviceNotDefined" in str(missing.error)
    finally:
        followed.retire(final=True)


def test_a_new_life_subscribes_before_the_old_one_unsubscribes(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make before break: when the old life's subscriptions start ending, the new life's are
    made, and Tango counts both callbacks on the event: its connection never closes."""
    seen_at_shutdown: list[tuple[list[SubscriptionState], int]] = []
    shut_down = module._shut_down

    def watched(scheduler: object, after: object) -> None:
        states = [s.state for s in new._subscriptions.values()]
        seen_at_shutdown.append((states, callbacks_on(MODE)))
        shut_down(scheduler, after)  # type: ignore[arg-type]

    old = FollowedAttributes(device, [MODE])
    wait_until(lambda: read(old, MODE) is not None, "the old life's first reading", SUBSCRIBED)
    assert callbacks_on(MODE) == 1
    monkeypatch.setattr(module, "_shut_down", watched)
    old.retire()
    new = FollowedAttributes(device, [MODE])
    try:
        wait_until(lambda: bool(seen_at_shutdown), "the old life ended", SUBSCRIBED)
        assert seen_at_shutdown == [([SubscriptionState.SUBSCRIBED], 2)]
        wait_until(lambda: callbacks_on(MODE) == 1, "only the new life's callback", SUBSCRIBED)
        assert read(new, MODE) is not None  # its own first event, as any subscription's
        follows_a_scan(new)
    finally:
        new.retire(final=True)
    wait_until(lambda: callbacks_on(MODE) == 0, "every callback ended", SUBSCRIBED)


def test_a_new_life_without_attributes_ends_the_old_subscriptions(device: str) -> None:
    old = FollowedAttributes(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire()
    new = FollowedAttributes(device, [])
    assert not new and new.readings() == {}
    wait_until(lambda: callbacks_on(MODE) == 0, "the old subscription ended", SUBSCRIBED)
    assert device not in module._retired


def test_a_life_not_followed_by_another_ends_its_subscriptions_after_a_while(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device deleted for good (RestartServer after it left the database) does not keep
    its subscriptions for the rest of the process."""
    monkeypatch.setattr(module, "UNCLAIMED", 0.2)
    old = FollowedAttributes(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire()
    assert callbacks_on(MODE) == 1  # kept for the next life
    wait_until(lambda: callbacks_on(MODE) == 0, "ended, unclaimed", SUBSCRIBED)
    assert device not in module._retired


def test_the_server_shutdown_ends_the_subscriptions_at_once(device: str) -> None:
    old = FollowedAttributes(device, [MODE])
    wait_until(lambda: callbacks_on(MODE) == 1, "subscribed", SUBSCRIBED)
    old.retire(final=True)
    wait_until(lambda: callbacks_on(MODE) == 0, "ended", SUBSCRIBED)
    assert device not in module._retired


def test_three_lives_in_a_row_hand_over_one_after_the_other(device: str) -> None:
    """Inits in a row: each life waits for the hand-over to the one before it."""
    lives = [FollowedAttributes(device, [MODE])]
    for _ in range(2):
        lives[-1].retire()
        lives.append(FollowedAttributes(device, [MODE]))
    try:
        wait_until(
            lambda: (
                [s.state for life in lives for s in life._subscriptions.values()]
                == [SubscriptionState.ENDED, SubscriptionState.ENDED, SubscriptionState.SUBSCRIBED]
                and callbacks_on(MODE) == 1  # (a subscription is ENDED before Tango ends it)
            ),
            "each life subscribed, and all but the last unsubscribed",
            SUBSCRIBED,
        )
        follows_a_scan(lives[-1])
    finally:
        lives[-1].retire(final=True)
    wait_until(lambda: callbacks_on(MODE) == 0, "ended", SUBSCRIBED)

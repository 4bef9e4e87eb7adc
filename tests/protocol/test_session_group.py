"""SessionReader with a consumer group: the read position lives in Redis, announcements
stay pending until acknowledged, and a new reader gets the pending ones first."""

from __future__ import annotations

from typing import Any, cast

import redis

from nexus_writer.protocol import Keys, SessionPublisher, SessionReader
from nexus_writer.protocol.keys import text

GROUP = "writers"
STREAM = Keys().session_scans("grp")


def announce(client: redis.Redis, count: int) -> list[str]:
    publisher = SessionPublisher(client, "grp")
    return [
        publisher.new_scan(
            name="ct", title="ct", file="/x.h5", channels=[{"name": "c", "dtype": "<f8"}]
        ).key
        for _ in range(count)
    ]


def keys_of(reader: SessionReader) -> list[str]:
    return [a.key for a in reader.read(0.05)]


def newest_id(client: redis.Redis) -> str:
    entries = cast(list[tuple[bytes, Any]], client.xrevrange(STREAM, count=1))
    return text(entries[0][0])


def pending_ids(client: redis.Redis) -> list[str]:
    pending = cast(list[dict[str, Any]], client.xpending_range(STREAM, GROUP, "-", "+", 10))
    return [text(entry["message_id"]) for entry in pending]


def test_a_new_group_starts_now_and_later_readers_continue_where_it_is(
    redis_client: redis.Redis,
) -> None:
    announce(redis_client, 2)
    first = SessionReader(redis_client, "grp", group=GROUP)
    assert first.created
    assert keys_of(first) == []  # "$": what was announced before is not for it
    during = announce(redis_client, 2)
    got = first.read(0.05)
    assert [a.key for a in got] == during
    first.ack(got[0].stream_id)  # the first is written; the second is not finished

    after = announce(redis_client, 1)  # while no reader runs
    second = SessionReader(redis_client, "grp", since="0-0", group=GROUP)
    assert not second.created  # since applies only to a new group
    assert keys_of(second) == [during[1]]  # pending first...
    assert keys_of(second) == after  # ...then what came meanwhile
    assert keys_of(second) == []
    assert second.delivered == newest_id(redis_client)
    assert pending_ids(redis_client) == [got[1].stream_id, newest_id(redis_client)]


def test_pending_announcements_trimmed_or_malformed_are_acknowledged_and_skipped(
    redis_client: redis.Redis,
) -> None:
    reader = SessionReader(redis_client, "grp", group=GROUP)
    (good,) = announce(redis_client, 1)
    good_id = newest_id(redis_client)
    redis_client.xadd(STREAM, {"nonsense": "1"})
    (trimmed,) = announce(redis_client, 1)
    assert keys_of(reader) == [good, trimmed]  # the malformed one is reported and acked
    redis_client.xdel(STREAM, newest_id(redis_client))  # trimmed while pending
    assert len(pending_ids(redis_client)) == 2

    again = SessionReader(redis_client, "grp", group=GROUP)
    assert keys_of(again) == [good]
    assert pending_ids(redis_client) == [good_id]  # the trimmed one was acknowledged


def test_a_group_lost_by_redis_is_made_again_and_nothing_after_is_missed(
    redis_client: redis.Redis,
) -> None:
    reader = SessionReader(redis_client, "grp", group=GROUP)
    announce(redis_client, 1)
    assert len(reader.read(0.05)) == 1
    redis_client.flushall()  # as a Redis restarted without persistence has it
    redis_client.set(Keys().protocol, "1.0")
    assert reader.read(0.05) == []  # the group is made again (a warning says so)
    after = announce(redis_client, 2)
    assert keys_of(reader) == after

"""The writer tests' guard (tests/writer/conftest.py): a subscriber that a test leaves
running is stopped after it, and a passing test that left one fails."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.writer.helpers import run_inner_pytest

_ROOT = Path(__file__).resolve().parents[2]

_LEAVING_MODULE = """
from nexus_writer.nexus.options import WriterOptions
from nexus_writer.redis_client import connect
from nexus_writer.session_writer import NexusSessionWriter

left = []


def start_writer(redis, root):
    writer = NexusSessionWriter(connect(redis.url), "left", WriterOptions(roots=(root,)))
    writer.start()
    left.append(writer)


def test_passes_and_leaves_its_writer(nexus_redis, tmp_path):
    start_writer(nexus_redis, tmp_path)


def test_fails_and_leaves_its_writer(nexus_redis, tmp_path):
    start_writer(nexus_redis, tmp_path)
    raise AssertionError("the test's own failure")


def test_the_writers_left_were_stopped():
    assert len(left) == 2 and all(writer.join(0) for writer in left)
"""


@pytest.mark.timeout(120)
def test_a_subscriber_left_running_is_stopped_and_fails_a_passing_test(tmp_path: Path) -> None:
    run, outcomes = run_inner_pytest(
        tmp_path,
        textwrap.dedent(_LEAVING_MODULE),
        "-p",
        "tests.writer.conftest",
        env={"PYTHONPATH": str(_ROOT)},
        timeout=110,
    )
    passed, failed, stopped = (
        outcomes["test_passes_and_leaves_its_writer"],
        outcomes["test_fails_and_leaves_its_writer"],
        outcomes["test_the_writers_left_were_stopped"],
    )
    assert [tag for tag, _ in passed] == ["error"], outcomes
    assert "the test left subscribers running" in passed[0][1], outcomes
    # A failing test keeps its own failure alone: the guard adds no error to it.
    assert [tag for tag, _ in failed] == ["failure"], outcomes
    assert "the test's own failure" in failed[0][1], outcomes
    assert stopped == [], (outcomes, run.stdout)

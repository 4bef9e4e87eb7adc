"""Writer tests' fixtures: no subscriber outlives its test.

.. important::
   The writer tests share one Redis server (the session's) and one process. A scan or
   session writer that a failing test leaves running goes on reading that Redis and holds
   its files open: seen in CI, one test's timeout left a session writer that failed the four
   tests after it (an open file they did not expect; Redis calls they counted).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator

import pytest

from nexus_writer.subscriber import Subscriber
from tests.conftest import PROMPT

_log = logging.getLogger(__name__)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test (``rep_call``): teardown reads the call's."""
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def stop_leftover_subscribers(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Record every :class:`Subscriber` the test starts (scan writers of a session writer
    too); at teardown stop those still running, killing one that does not stop in time.

    A test that passed and left one running fails at teardown: it kept its writer's
    threads and files beyond its end, which the next tests would pay for.
    """
    started: list[Subscriber] = []
    start = Subscriber.start

    def recording_start(self: Subscriber, wait: bool = False, timeout: float | None = None) -> None:
        started.append(self)
        start(self, wait, timeout)

    monkeypatch.setattr(Subscriber, "start", recording_start)
    yield
    monkeypatch.undo()
    running = [s for s in started if not s.join(0)]
    for subscriber in running:
        try:
            subscriber.stop(wait=True, timeout=PROMPT)
        except TimeoutError:
            _log.warning("subscriber %r did not stop in %s s: killed", subscriber.name, PROMPT)
            subscriber.kill(wait=True, timeout=PROMPT)
    report = getattr(request.node, "rep_call", None)
    if running and report is not None and report.passed:
        pytest.fail(f"the test left subscribers running: {[s.name for s in running]}")

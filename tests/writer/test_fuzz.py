"""Fuzzing the running service with spoilt scan documents (issue 9).

Each example publishes a good scan and a scan whose stored document was mutated from a
valid one (a field replaced by random JSON, removed, or added), both announced in the
session of one real ``nexus-writer run``. After each example: the service is alive, it
has finished with both scans (its consumer group acknowledged them), the good scan is
exact, the spoilt one's entry (if it has one) is ended, and nothing exists outside the
root. ``make test`` runs a fixed set of examples (derandomized); ``make fuzz`` runs
``FUZZ_EXAMPLES`` of them (8,000 there, about ten minutes), each run different.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_writer.nexus.master import scan_key
from nexus_writer.protocol import Keys, SessionPublisher
from nexus_writer.redis_server import EmbeddedRedis
from tests.writer.helpers import wait_until_all_acknowledged
from tests.writer.test_service import _service, lines_of

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SESSION = "fuzz"
VALUES = np.arange(6.0)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


class Service:
    """One running service on the session, with its own Redis and root."""

    def __init__(self, tmp: Path) -> None:
        self.redis = EmbeddedRedis().start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.outside = tmp
        self.root = tmp / "root"
        self.root.mkdir()
        self.process: subprocess.Popen[str] = _service(self.redis.url, self.root, session=SESSION)
        self.lines = lines_of(self.process.stderr)
        self.log: list[str] = []
        self.count = 0

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.log):
            try:
                self.log.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {needle!r} in the log: {self.log[-10:]}") from None

    def drain(self) -> None:
        while True:
            try:
                self.log.append(self.lines.get_nowait())
            except queue.Empty:
                return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.client.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("fuzz"))
    try:
        running.wait_for_log(f"session {SESSION}: following from announcement")
        yield running
    finally:
        running.stop()


def good_scan(service: Service, file: Path, session: str) -> tuple[str, dict[str, Any]]:
    """A complete, valid scan published under ``session``; its key and its document."""
    scan = SessionPublisher(service.client, session).new_scan(
        name="ascan",
        title="ascan m 0 5 6",
        file=str(file),
        channels=[
            {"name": "axis:m", "dtype": "<f8", "role": "positioner", "unit": "mm"},
            {"name": "simu:diode", "dtype": "<i4"},
            {"name": "simu:mca", "dtype": "<u2", "shape": [8], "role": "spectrum"},
        ],
        shape=[6],
        positioners={"m": 0.0, "n": 1.5},
        user={"sample": "gold", "temperature": 300},
    )
    scan.prepare()
    scan.start()
    scan.send("axis:m", VALUES)
    scan.send("simu:diode", VALUES.astype("<i4"))
    scan.send("simu:mca", np.ones((6, 8), "<u2"))
    scan.close()
    return scan.key, json.loads(cast(bytes, service.client.get(scan.key)))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: dict keys and list positions, recursively."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


@st.composite
def mutations(draw: st.DrawFn, document: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The document with one to three places spoilt, and what was done."""
    spoilt = copy.deepcopy(document)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in paths(spoilt) if p[0] not in ("key",)]
        place = draw(st.sampled_from(places))
        parent: Any = spoilt
        for step in place[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[place[-1]] = draw(json_values)
        elif action == "remove":
            del parent[place[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
        done.append(f"{action} {place}")
    return spoilt, "; ".join(done)


def acknowledged(service: Service) -> None:
    """Until the service has finished with every scan announced; its log if it does not."""
    try:
        wait_until_all_acknowledged(service.client, SESSION, timeout=30)
    except AssertionError as exc:
        service.drain()
        raise AssertionError(f"{exc}: {service.log[-15:]}") from None


@pytest.mark.timeout(max(120, EXAMPLES * 10))
def test_spoilt_documents_never_cost_good_scans_the_service_or_the_roots(
    service: Service,
) -> None:
    _, template = good_scan(service, service.root / "template.h5", "staging")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=EXAMPLES <= 100,  # make test: the same examples every time
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated=mutations(template))
    def example(mutated: tuple[dict[str, Any], str]) -> None:
        document, what = mutated
        service.count += 1
        n = service.count
        # The spoilt scan: published whole under a session nobody follows, its document
        # replaced, then announced in the service's session.
        bad_key, _ = good_scan(service, service.root / f"bad{n}.h5", "staging")
        document = {**document, "key": bad_key} if "key" in document else document
        spoilt_file = document.get("file")
        service.client.set(bad_key, json.dumps(document))
        service.client.xadd(
            Keys().session_scans(SESSION), {"key": bad_key, "name": "ascan", "number": n}
        )
        good_key, _ = good_scan(service, service.root / f"good{n}.h5", SESSION)
        acknowledged(service)
        assert service.process.poll() is None, f"the service died after: {what}"
        # The good scan is exact.
        with h5py.File(service.root / f"good{n}.h5", "r") as handle:
            (name,) = [e for e in handle if scan_key(handle, e) == good_key]
            entry = handle[name]
            assert entry["writer/status"][()] in (b"SUCCEEDED", "SUCCEEDED"), what
            np.testing.assert_array_equal(entry["measurement/m"][()], VALUES)
            np.testing.assert_array_equal(entry["measurement/diode"][()], VALUES.astype("<i4"))
            assert "end_time" in entry
        # The spoilt scan's entry, if it has one where it was to go, is ended.
        expected = service.root / f"bad{n}.h5"
        if spoilt_file == str(expected) and expected.exists():
            with h5py.File(expected, "r") as handle:
                for name in handle:
                    entry = handle[name]
                    assert "end_time" in entry and "writer/status" in entry, what
        # Nothing outside the root (the tmp directory holds only the root).
        assert sorted(p.name for p in service.outside.iterdir()) == ["root"], what
        assert not Path("data").exists()

    example()

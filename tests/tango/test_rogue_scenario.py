"""Seed 002's rogue-device scenario, end to end: scripts/rogue_scenario.py with its own
embedded Tango database and real device servers, run both ways in one go."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tango.conftest import ROOT

SCENARIO = ROOT / "scripts" / "rogue_scenario.py"
ROGUE_DELAY = 0.3


@pytest.mark.timeout(180)
def test_the_scheduler_saves_the_scan_that_a_rogue_callback_times_out(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    process = subprocess.run(
        [
            sys.executable,
            str(SCENARIO),
            "--rogue-delay",
            str(ROGUE_DELAY),
            "--json",
            str(result),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    outcome = json.loads(result.read_text())

    plain = outcome["plain"]
    assert not plain["completed"]
    assert "Timeout waiting for Mode.IDLE" in plain["error"]
    # The monitor names the culprit: the position callbacks, in Tango's consumer thread.
    assert plain["slowest"]["stream"] == "position"
    assert plain["slowest"]["seen_in"] == "tango"
    assert plain["slowest"]["processing_median"] == pytest.approx(ROGUE_DELAY, rel=0.3)
    assert "position processing time [ms]" in process.stdout

    scheduled = outcome["scheduled"]
    assert scheduled["completed"], scheduled
    # At worst the IDLE event waits for one rogue callback that had just started.
    assert scheduled["mode_latency"] < ROGUE_DELAY + 0.1
    assert scheduled["slowest"]["stream"] == "foo/bar/hw/position.change"
    assert scheduled["slowest"]["seen_in"] == "scheduler"
    assert "Callback scheduler of foo/bar/top" in process.stdout

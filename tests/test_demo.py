"""``make demo``'s command, as a new user runs it: the whole stack, twice in a row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_the_demo_runs_twice(tmp_path: Path) -> None:
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "nexus_writer.cli", "demo", "--root", str(tmp_path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
        assert "demo/nexus/writer is ON" in done.stdout
        assert "6 written, 0 failed" in done.stdout
        assert "nxcheck: 0 error(s)" in done.stdout
        suffix = "" if run == 1 else "_2"  # the second run's entries beside the first's
        assert f"::/scan_0001{suffix}\n" in done.stdout

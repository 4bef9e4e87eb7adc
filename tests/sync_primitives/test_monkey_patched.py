"""The primitives under gevent.monkey.patch_all(), patched before or after their import.

Monkey-patching cannot be undone, so each case runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "scripts" / "patched_program.py"
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("when", ["before", "after"])
def test_every_primitive_works_in_a_monkey_patched_program(when: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(PROGRAM), when],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ALL OK"), run.stdout + run.stderr

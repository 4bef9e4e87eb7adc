"""os.fork() while primitives are in use: the child can use what it inherited, and the
parent is not disturbed by the child.

The fork runs in a subprocess (scripts/fork_program.py) that sets up a known set of threads:
a hub thread and a plain thread asleep in the primitives, a plain thread holding their
internal mutexes at the instant of the fork, and greenlets of the forking thread's hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(__file__).parent / "scripts" / "fork_program.py"
ROOT = Path(__file__).parents[2]


def test_child_uses_inherited_queue_lock_and_event_and_parent_is_undisturbed() -> None:
    # Not under coverage (make test measures subprocesses through this variable): on
    # Python 3.10, coverage's tracer is not fork-safe with other threads running, and the
    # "hammered" children hang in most runs, also with sync_primitives' threads untraced
    # and with a plain threading.Thread as the hammer. 3.11 and later pass.
    env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}
    run = subprocess.run(
        [sys.executable, str(PROGRAM)],
        check=False,
        capture_output=True,
        text=True,
        timeout=45,
        env=dict(env, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    failures = {
        f"{side}: {check}": outcome
        for side, results in report.items()
        for check, outcome in results.items()
        if outcome != "ok"
    }
    assert not failures, "\n".join(f"{name}\n{why}" for name, why in failures.items())
    sides = ("child", "parent", "interrupted", "ordered", "hammered")
    assert [len(report[side]) for side in sides] == [13, 2, 6, 2, 1]

"""ExitWatchdog in a child process of its own (it ends its process)."""

from __future__ import annotations

import textwrap

from tests.conftest import run_python

#: The child: one device stopped, a second one stopping for 1 s (five graces), a third
#: line never printed: the process ends one grace after the second device's stop.
CHILD = textwrap.dedent(
    """
    import logging, time
    from nexus_writer.tango.exit_watchdog import ExitWatchdog
    logging.basicConfig(level="INFO")
    watchdog = ExitWatchdog(grace=0.2)
    watchdog.stopping()
    watchdog.stopped()
    watchdog.stopping()  # a second device closes its scans: the process waits for it
    time.sleep(1.0)
    print("second device stopping", flush=True)
    watchdog.stopped()
    time.sleep(60)
    print("never", flush=True)
    """
)


def test_the_process_ends_one_grace_after_the_last_device_stopped() -> None:
    child = run_python(CHILD, 30)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["second device stopping"]
    assert "did not end within 0.2 s of the last device's stop: exiting anyway" in child.stderr

"""ExitWatchdog: the server process ends once its devices have stopped, even when Tango's
own cleanup does not.

.. important::
   :meth:`ExitWatchdog.stopping` and :meth:`ExitWatchdog.stopped` are called by the devices'
   ``delete_device`` at the server's shutdown (the server's hub); the watchdog itself is a
   native thread (``_thread``, also under gevent's monkey-patching), so that it runs while
   the hub, or the main thread, waits in Tango's C++ code.

Why: with a followed attribute's device hung (its process stopped), a few ``Init`` and
then SIGTERM or the admin device's ``Kill``, the server ran every ``delete_device`` (scans
closed, leases given back) and then waited for good in omniORB's shutdown
(``omniOrbORB::actual_shutdown``, waiting for its last object identity): a service that
SIGTERM could not stop. Once the last device has stopped, Tango's cleanup gets ``grace``
seconds; after that the process logs a warning and exits with status 0: everything the
service owns is closed by then. The last device to stop also gives its followed
attributes' Tango calls ``grace`` seconds to return before Tango's cleanup starts, and
ends the process the same way if they do not (``followed_attributes.py``, The server's
end).
"""

from __future__ import annotations

import logging
import os
import time
from typing import NoReturn

from gevent.monkey import get_original

_log = logging.getLogger(__name__)

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_sleep = get_original("time", "sleep")

#: Seconds Tango's cleanup may take once the last device has stopped (``--exit-grace``).
EXIT_GRACE = 15.0


class ExitWatchdog:
    """Ends the process ``grace`` seconds after the last device stopped, if it is still
    there; a device stopping meanwhile (closing its scans) postpones that."""

    def __init__(self, grace: float = EXIT_GRACE) -> None:
        self.grace = grace
        self._lock = _allocate_lock()
        self._stopping = 0  #: devices in delete_device at the shutdown
        self._deadline: float | None = None
        self._started = False

    def stopping(self) -> None:
        """A device starts stopping (closing its scans: no deadline meanwhile)."""
        with self._lock:
            self._stopping += 1

    def stopped(self) -> None:
        """That device has stopped: the grace starts again from now."""
        with self._lock:
            self._stopping = max(0, self._stopping - 1)
            self._deadline = time.monotonic() + self.grace
            start, self._started = not self._started, True
        if start:
            _start_new_thread(self._watch, ())

    def _watch(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = self._deadline if self._stopping == 0 else now + self.grace
            assert due is not None
            if now >= due:
                break
            _sleep(min(due - now, 0.5))
        exit_now(f"Tango's cleanup did not end within {self.grace} s of the last device's stop")


def exit_now(why: str) -> NoReturn:
    """Log ``why`` as a warning, followed by ``: exiting anyway (every device had closed its
    scans)``, and end the process with status 0, skipping Tango's cleanup and the
    interpreter's: only once every device has stopped (its scans closed, its lease given
    back)."""
    _log.warning("%s: exiting anyway (every device had closed its scans)", why)
    logging.shutdown()
    os._exit(0)


#: The process's watchdog, set up by NexusWriterService's ``--exit-grace``.
WATCHDOG = ExitWatchdog()

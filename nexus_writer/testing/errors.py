"""The testing kit's errors.

.. important::
   Plain exceptions: raised in the thread that waits (a test's main thread, usually).
"""

from __future__ import annotations


class WriterStoppedError(RuntimeError):
    """The writer service (or device) stopped, or never started, before what was waited for."""


class ScanNotWrittenError(AssertionError):
    """A scan ended without an entry to read (its file was refused: outside the roots, not
    a path...); the message gives the writer's reason."""

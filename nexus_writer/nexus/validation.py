"""Checking written files against the NeXus standard, with nexusformat's ``nxcheck``.

.. important::
   Runs ``nxcheck`` in a child process; call it from any thread, on a file that is closed or
   at least flushed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def nxcheck_errors(path: str, group: str | None = None) -> int:
    """How many errors ``nxcheck`` (from this Python's environment) finds in ``path``, or
    only in its ``group`` (``/scan_0001``, say) and what that holds.

    Raises:
        RuntimeError: nxcheck gave no verdict (its output is in the message).
    """
    nxcheck = os.path.join(os.path.dirname(sys.executable), "nxcheck")
    only = ["--path", group] if group is not None else []
    run = subprocess.run([nxcheck, *only, path], capture_output=True, text=True, check=False)
    plain = _COLOURS.sub("", run.stdout + run.stderr)
    found = re.search(r"Total number of errors:\s*(\d+)", plain)
    if not found:
        raise RuntimeError(f"nxcheck gave no verdict on {path}: {plain[-2000:]}")
    return int(found.group(1))

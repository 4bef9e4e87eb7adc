"""Watch a NeXus file being written, as a user's reader would (h5py, default settings).

Usage: watch_file.py FILE ENTRY FAST_TOTAL SLOW_TOTAL TIMEOUT
Prints "time n_fast n_slow" whenever what it can read changes; exits when it has seen both
totals or after TIMEOUT seconds.
"""

import sys
import time

import h5py

path, entry, fast_total, slow_total, timeout = sys.argv[1:6]
deadline = time.time() + float(timeout)
last = (-1, -1)
while time.time() < deadline:
    measurement = None
    try:
        with h5py.File(path, "r") as handle:  # default file locking, as silx and users do
            measurement = handle[entry]["measurement"]
            seen = (len(measurement["fast"]), len(measurement["slow"]))
    except (OSError, KeyError):
        seen = (0, 0)  # not created yet, or a torn read
    finally:
        # The entry is in the scan's own file, reached through an external link: an
        # object kept past close() keeps that file open, and its view stale
        # (docs/reading-files.md). Keep nothing, also after a torn read: kept then, it
        # made every later look fail until the end.
        measurement = None
    now = time.time()
    if seen != last:
        print(f"{now:.6f} {seen[0]} {seen[1]}", flush=True)
        last = seen
    if seen == (int(fast_total), int(slow_total)):
        break
    time.sleep(0.01)  # an external observer polls the file: that is the scenario

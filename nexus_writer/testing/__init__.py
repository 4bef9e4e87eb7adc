"""A kit for scan-writing integration tests: a real Redis, a real writer service, a real
file (docs/testing.md).

* :class:`RunningWriter`: a writer service on one session, in a thread of its own; it
  says when it is ready and waits for a scan's end on the writer's own signal.
* :class:`DeviceWriter` (with the ``tango`` extra): the same, behind a NexusWriter device
  in a device server of its own, registered in an embedded Tango database.
* :class:`WrittenScan` and :func:`read_written_scan`: a scan's entry read back into numpy
  arrays, its status, messages and metadata.
* The pytest plugin :mod:`nexus_writer.testing.plugin` (installed with
  ``pip install 'nexus-writer[testing]'``, loaded by pytest by itself): the fixtures
  ``nexus_redis``, ``nexus_root``, ``nexus_session``, ``nexus_writer``,
  ``nexus_publisher``, ``nexus_beamline``, and with the ``tango`` extra,
  ``nexus_tango_database`` and ``nexus_writer_device``.

.. important::
   Each module's docstring says which threads its objects belong to; everything here may
   be used from a test's main thread, with or without gevent.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .device_writer import DeviceWriter
    from .errors import ScanNotWrittenError, WriterStoppedError
    from .running_writer import RunningWriter
    from .written_scan import WrittenScan, read_written_scan

# Imported when first used: pytest loads this package (for its plugin) in every run where
# nexus-writer is installed, and the writer's imports take half a second.
_MODULE_OF = {
    "DeviceWriter": "device_writer",  # imports Tango: only when asked for
    "RunningWriter": "running_writer",
    "ScanNotWrittenError": "errors",
    "WriterStoppedError": "errors",
    "WrittenScan": "written_scan",
    "read_written_scan": "written_scan",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


__all__ = [
    "DeviceWriter",
    "RunningWriter",
    "ScanNotWrittenError",
    "WriterStoppedError",
    "WrittenScan",
    "read_written_scan",
]

"""A simulated beamline that publishes realistic scans: the data source of the demo and of
the integration tests.

.. important::
   A :class:`Beamline` runs one scan at a time in the calling thread; see its module.
"""

from .beamline import Beamline, Detectors, PublishedScan
from .detectors import FRAME_DATASET, MCA_CHANNELS
from .scans import SCAN_TYPES, ScanPlan, ScanSyntaxError, parse_scan

__all__ = [
    "FRAME_DATASET",
    "MCA_CHANNELS",
    "SCAN_TYPES",
    "Beamline",
    "Detectors",
    "PublishedScan",
    "ScanPlan",
    "ScanSyntaxError",
    "parse_scan",
]

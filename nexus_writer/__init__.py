"""nexus-writer: saves scans published in Redis as NeXus/HDF5 files.

.. important::
   Nothing in this package is imported at start-up except the version: each subsystem
   documents the thread and hub its own objects belong to.
"""

__version__ = "0.1.0.dev0"

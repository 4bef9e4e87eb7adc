"""Tango event tooling: the CallbackScheduler (seed 000) and, to come, the event monitor
(seed 002) and the NexusWriter device (issue 11).

.. important::
   Each module's docstring says which threads its objects belong to.
"""

from .callback_scheduler import CallbackScheduler, StreamStatistics

__all__ = ["CallbackScheduler", "StreamStatistics"]

"""Tango event tooling: the CallbackScheduler (seed 000), the event monitor (seed 002) and
an embedded Tango database for tests and demos.

.. important::
   Each module's docstring says which threads its objects belong to.
"""

from .callback_scheduler import STATISTICS_ATTRIBUTE, CallbackScheduler, QueueStatistics
from .subscription import (
    Subscription,
    SubscriptionError,
    SubscriptionState,
    SubscriptionStatistics,
    stream_name,
)
from .summary import Summary, summarize

__all__ = [
    "STATISTICS_ATTRIBUTE",
    "CallbackScheduler",
    "QueueStatistics",
    "Subscription",
    "SubscriptionError",
    "SubscriptionState",
    "SubscriptionStatistics",
    "Summary",
    "stream_name",
    "summarize",
]

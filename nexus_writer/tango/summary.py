"""Summary: mean with its error, median, count, extremes and percentiles of some samples.

.. important::
   Plain functions on plain data; they hold no state and belong to no thread.

One definition for the CallbackScheduler's statistics and the event monitor's tables, so
that a processing time reads the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Percentiles given when there are at least :data:`PERCENTILE_SAMPLES` samples: fewer make
#: the 1 % and 99 % points a mere minimum and maximum.
PERCENTILES = (1, 10, 90, 99)
PERCENTILE_SAMPLES = 10


@dataclass(frozen=True)
class Summary:
    """Statistics of a set of samples, in the samples' unit."""

    count: int
    mean: float
    error: float  #: standard error of the mean (0 for one sample)
    median: float
    minimum: float
    maximum: float
    #: ``{1: p1, 10: p10, 90: p90, 99: p99}``, empty below PERCENTILE_SAMPLES samples
    percentiles: dict[int, float]


def summarize(samples: Iterable[float]) -> Summary | None:
    """The summary of ``samples``, or None when there are none."""
    ordered = sorted(samples)
    count = len(ordered)
    if not count:
        return None
    mean = math.fsum(ordered) / count
    if count > 1:
        variance = math.fsum((x - mean) ** 2 for x in ordered) / (count - 1)
        error = math.sqrt(variance / count)
    else:
        error = 0.0
    return Summary(
        count=count,
        mean=mean,
        error=error,
        median=_quantile(ordered, 0.5),
        minimum=ordered[0],
        maximum=ordered[-1],
        percentiles=(
            {p: _quantile(ordered, p / 100) for p in PERCENTILES}
            if count >= PERCENTILE_SAMPLES
            else {}
        ),
    )


def _quantile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

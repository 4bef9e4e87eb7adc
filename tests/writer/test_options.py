"""WriterOptions refuse, when made, a value that would make the writers misbehave."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nexus_writer.nexus.options import WriterOptions


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inactivity_timeout", -1.0),  # every scan closed at once as inactive
        ("inactivity_timeout", 0),
        ("inactivity_timeout", math.nan),  # no scan ever closed, a busy wait
        ("inactivity_timeout", math.inf),
        ("inactivity_timeout", "600"),
        ("retry_max_delay", 0.0),
        ("retry_max_delay", True),
        ("max_points", 0),
        ("max_channels", 2.5),
        ("max_point_bytes", -1),
        ("chunk_bytes", 0),
        ("write_bytes", None),
        ("max_metadata_items", False),
        ("min_free_bytes", -1),
    ],
)
def test_a_bad_time_or_limit_is_refused_naming_it(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be .*, not {value!r}$"):
        WriterOptions(**{field: value})  # type: ignore[arg-type]


def test_the_least_values_and_numpy_numbers_are_accepted() -> None:
    least = WriterOptions(
        inactivity_timeout=1e-3,
        retry_max_delay=np.float64(0.5),
        min_free_bytes=0,
        write_bytes=1,
        max_points=np.int64(1),  # type: ignore[arg-type]
        max_channels=1,
        max_metadata_items=1,
        max_point_bytes=1,
        chunk_bytes=1,
    )
    assert least.min_free_bytes == 0 and least.max_points == 1
    assert WriterOptions() == WriterOptions()

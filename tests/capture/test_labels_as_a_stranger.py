"""POST /labels as a stranger's fuzzer writes it: whatever the body, a label is kept or
refused by reason, never an exception out of the route (a 500)."""

from __future__ import annotations

from typing import Any

import pytest

from keyed_serving.capture.labels import read_labels


@pytest.mark.parametrize(
    "time",
    ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "0001-01-01T00:30:00+01:00"],
)
def test_a_time_whose_utc_is_beyond_the_calendar_is_refused_as_invalid_time(time: Any) -> None:
    rows = read_labels({"labels": [{"key": 1, "label": "x", "time": time}]}, "classification", 10)
    assert rows.accepted == 0 and rows.refused == {"invalid_time": 1}
    assert "labels[0].time" in rows.errors[0]["message"]

"""Jinja filters of the dashboard: durations in µs/ms with sensible precision, percentages."""

from __future__ import annotations

import math
from typing import Any


def duration_ms(value: Any) -> str:
    """A latency given in milliseconds, as people read it: 0.0045 -> "4.5 µs", 7.123 -> "7.12 ms",
    12.34 -> "12.3 ms", 1234.6 -> "1,235 ms"; three significant digits, "-" when unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0 ms"
    magnitude = abs(value)
    if magnitude < 1:
        micro = value * 1000
        if abs(micro) < 1:
            return f"{micro * 1000:.3g} ns"
        return f"{micro:.3g} µs"
    if magnitude < 10:
        return f"{value:.2f} ms"
    if magnitude < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def percent(value: Any) -> str:
    """0.5 -> "0.5%", 10.0 -> "10%"."""
    if not isinstance(value, int | float):
        return "-"
    return f"{value:g}%"


FILTERS = {"ms": duration_ms, "pct": percent}

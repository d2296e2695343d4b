"""Least-squares lines: a cost model's fixed and per-unit parts from measured points."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y against x, the intercept floored at 0 (a step
    cannot take negative time)."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return max(my - slope * mx, 0.0), slope

"""A latency histogram cheap enough for the hot path: fixed buckets, one bisect and two adds.

Buckets follow Prometheus: `counts[i]` holds observations <= `LATENCY_BOUNDS[i]` and above
the bound before it; the last count is above every bound (`+Inf`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = ["LATENCY_BOUNDS", "Histogram", "quantile"]

# Seconds: from half a millisecond (a request answered from memory) to 10 s.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts of observed durations per bucket, their number and their sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def to_json(self) -> dict[str, Any]:
        """`{"count", "sum", "bounds", "counts"}` (counts per bucket, not cumulative), with
        `p50` and `p99` estimated over everything observed."""
        return {
            "count": self.count,
            "sum": round(self.sum, 6),
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "p50": quantile(self.bounds, self.counts, 0.5),
            "p99": quantile(self.bounds, self.counts, 0.99),
        }


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The `q` quantile of per-bucket `counts`, interpolated inside its bucket; None when
    nothing was counted. Above the last bound the last bound is the answer (a floor)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return round(low + (bounds[i] - low) * (rank - seen) / n, 6)
        seen += n
    return bounds[-1]

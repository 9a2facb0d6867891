"""Fixed-bucket duration histograms: wait, use and create times.

Fixed bounds (not adaptive) because they are what Prometheus and OpenTelemetry export as they
are, and because recording is then one C-level ``bisect`` and three additions: cheap enough for
the return path. Not thread-safe on its own: the shells record under their lock (or on the
loop), like every other core counter.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BOUNDS", "Histogram", "HistogramSnapshot"]

#: upper bounds in seconds, inclusive (Prometheus ``le``); a last bucket takes what is above.
#: 100 µs is where a pool's own bookkeeping ends and 60 s beyond any sane ``timeout``.
BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip


def _quantile(bounds: Sequence[float], counts: Sequence[int], top: float, q: float) -> float:
    """Estimate the ``q`` quantile by linear interpolation inside its bucket (what
    Prometheus's ``histogram_quantile`` does), never beyond the largest value seen."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q!r} is not between 0 and 1")
    total = sum(counts)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = bounds[i - 1] if i else 0.0
            high = bounds[i] if i < len(bounds) else top
            return min(top, low + (high - low) * (rank - seen) / n)
        seen += n
    return top  # pragma: no cover - the loop always finds the rank


class Histogram:
    """Counts per bucket, their sum and the largest value, in seconds."""

    # ``low``/``low_sum``: the lowest bucket as the shells' fast return path counts it inline
    # (a subtraction, a comparison and two additions: no call). They are folded into
    # ``counts[0]``/``total`` when read.
    __slots__ = ("bounds", "counts", "first", "low", "low_sum", "max", "total")

    def __init__(self, bounds: Sequence[float] = BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds or bounds[0] <= 0:
            raise ValueError("histogram bounds must be positive and strictly increasing")
        self.bounds = tuple(bounds)
        self.first = self.bounds[0]
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.low = 0
        self.low_sum = 0.0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        # a clock stepping back (a fake clock in tests) must not make a negative duration
        if seconds < 0.0:
            seconds = 0.0
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    @property
    def count(self) -> int:
        return sum(self.counts) + self.low

    def snapshot(self, extra_zero: int = 0) -> HistogramSnapshot:
        """A frozen copy. ``extra_zero``: durations known to be ~0 that were not recorded one
        by one (fast-path checkouts never wait): they go to the lowest bucket."""
        counts = list(self.counts)
        counts[0] += self.low + max(extra_zero, 0)
        return HistogramSnapshot.of(
            self.bounds, tuple(counts), self.total + self.low_sum, self.max
        )

    def clear(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.low = 0
        self.low_sum = 0.0
        self.total = 0.0
        self.max = 0.0


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram as ``stats()`` reports it. ``counts[i]`` is the number of durations in
    ``(bounds[i-1], bounds[i]]``; the last count is for those above ``bounds[-1]``."""

    bounds: tuple[float, ...] = BOUNDS
    counts: tuple[int, ...] = (0,) * (len(BOUNDS) + 1)
    count: int = 0
    sum: float = 0.0  # seconds
    max: float = 0.0
    p50: float = 0.0  # estimated from the buckets
    p99: float = 0.0

    @classmethod
    def of(
        cls, bounds: tuple[float, ...], counts: tuple[int, ...], total: float, top: float
    ) -> HistogramSnapshot:
        return cls(
            bounds=bounds,
            counts=counts,
            count=sum(counts),
            sum=total,
            max=top,
            p50=_quantile(bounds, counts, top, 0.5),
            p99=_quantile(bounds, counts, top, 0.99),
        )

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Estimate the ``q`` quantile (0..1) from the buckets."""
        return _quantile(self.bounds, self.counts, self.max, q)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, count of durations <= it)`` pairs ending with ``inf``: the shape
        Prometheus and OpenTelemetry exporters want."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

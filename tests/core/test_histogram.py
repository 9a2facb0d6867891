"""The fixed-bucket histograms behind ``stats().wait_time`` / ``use_time`` / ``create_time``."""

from __future__ import annotations

import math

import pytest

import millpond
from millpond._core.histogram import BOUNDS, Histogram, HistogramSnapshot


def test_a_value_on_a_bound_belongs_to_that_bucket_and_above_the_last_to_the_overflow() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.add(v)
    s = h.snapshot()
    assert s.counts == (2, 2, 1)  # (0, 0.1], (0.1, 1], above 1
    assert s.count == 5
    assert s.sum == pytest.approx(8.65)
    assert s.max == 7.0
    assert s.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]


def test_the_default_bounds_span_100_microseconds_to_a_minute() -> None:
    assert BOUNDS[0] == 0.0001 and BOUNDS[-1] == 60.0
    assert list(BOUNDS) == sorted(set(BOUNDS))
    assert len(HistogramSnapshot().counts) == len(BOUNDS) + 1


def test_quantiles_interpolate_inside_the_bucket_and_never_exceed_the_max() -> None:
    h = Histogram((1.0, 2.0, 4.0))
    for _ in range(50):
        h.add(0.5)
    for _ in range(50):
        h.add(3.0)
    s = h.snapshot()
    assert s.p50 == pytest.approx(1.0)  # the 50th of 100 values ends the first bucket
    assert s.quantile(0.75) == pytest.approx(3.0)  # halfway through (2, 4]
    assert s.p99 == pytest.approx(3.0)  # interpolation would say 3.96; nothing exceeded 3
    assert s.quantile(0.0) == 0.0
    assert s.mean == pytest.approx(1.75)
    with pytest.raises(ValueError, match="between 0 and 1"):
        s.quantile(1.5)


def test_the_overflow_bucket_estimates_up_to_the_max() -> None:
    h = Histogram((1.0,))
    h.add(10.0)
    h.add(30.0)
    assert h.snapshot().quantile(0.5) == pytest.approx(15.5)  # halfway through (1, 30]
    assert h.snapshot().p99 <= 30.0


def test_an_empty_histogram_reads_as_zeros() -> None:
    s = Histogram().snapshot()
    assert (s.count, s.sum, s.max, s.p50, s.p99, s.mean) == (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert s == HistogramSnapshot()


def test_inline_low_counts_and_unrecorded_zeros_fold_into_the_lowest_bucket() -> None:
    h = Histogram()
    # what the shells' fast return does without a call
    h.low += 2
    h.low_sum += 0.00005
    h.add(0.3)
    assert h.count == 3
    s = h.snapshot(extra_zero=4)  # fast-path checkouts: never waited
    assert s.counts[0] == 6
    assert s.count == 7
    assert s.sum == pytest.approx(0.30005)
    assert s.max == 0.3


def test_a_negative_duration_counts_as_zero() -> None:
    h = Histogram()
    h.add(-1.0)
    assert h.snapshot().counts[0] == 1 and h.total == 0.0


def test_clear_forgets_everything() -> None:
    h = Histogram()
    h.add(2.0)
    h.low += 1
    h.clear()
    assert h.snapshot() == HistogramSnapshot()


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0)])
def test_bounds_must_be_positive_and_increasing(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram(bounds)


def test_pool_stats_built_without_timings_get_empty_ones() -> None:
    # PoolStats grew the timing fields with defaults: code that builds one still works
    s = millpond.PoolStats(
        name="p", size=0, idle=0, in_use=0, waiting=0, opening=0, min_size=0, max_size=1,
        max_overflow=0, closed=False,
    )
    assert s.wait_time == s.use_time == s.create_time == HistogramSnapshot()
    d = s.as_dict()
    assert d["wait_time"]["count"] == 0
    assert d["use_time"]["counts"] == (0,) * (len(BOUNDS) + 1)

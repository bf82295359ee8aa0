"""Per-device token buckets, in virtual time."""

from __future__ import annotations

import pytest

from vendwatch.ingest.limits import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    b = TokenBuckets(rate=10, burst=50, clock=clock)
    assert b.take("VM-1", 50) == 0
    assert b.take("VM-1", 1) == pytest.approx(0.1)  # one token comes back every 0.1 s
    clock.t += 1.0
    assert b.take("VM-1", 10) == 0
    assert b.take("VM-1", 5) == pytest.approx(0.5)
    clock.t += 100
    assert b.take("VM-1", 50) == 0  # never more than the burst


def test_devices_are_independent_and_refusals_cost_nothing() -> None:
    clock = Clock()
    b = TokenBuckets(rate=1, burst=5, clock=clock)
    assert b.take("VM-1", 5) == 0
    assert b.take("VM-1", 3) == pytest.approx(3.0)
    assert b.take("VM-2", 5) == 0
    clock.t += 3
    assert b.take("VM-1", 3) == 0  # the refused request did not consume tokens


def test_a_batch_larger_than_the_burst_is_told_how_long_a_full_bucket_takes() -> None:
    clock = Clock()
    b = TokenBuckets(rate=10, burst=20, clock=clock)
    assert b.take("VM-1", 30) == pytest.approx(1.0)


def test_memory_is_bounded() -> None:
    clock = Clock()
    b = TokenBuckets(rate=1, burst=5, clock=clock, max_keys=100)
    for i in range(1000):
        b.take(f"VM-{i}", 1)
    assert len(b._b) <= 100

"""Token buckets per key (the click-to-dial rate limit)."""

from __future__ import annotations

import pytest

from gateway.security.ratelimit import TokenBuckets


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1 / 6, burst=2, clock=clock)  # 10 per minute
    assert buckets.take("u") is None and buckets.take("u") is None
    wait = buckets.take("u")
    assert wait == pytest.approx(6.0)
    clock.now = 5.9
    assert buckets.take("u") is not None
    clock.now = 6.1
    assert buckets.take("u") is None
    assert buckets.take("other") is None  # keys are independent


def test_refund_gives_the_token_back_but_never_above_the_burst() -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, clock=Clock())
    assert buckets.take("u") is None
    assert buckets.take("u") is not None
    buckets.refund("u")
    assert buckets.take("u") is None
    buckets.refund("u")
    buckets.refund("u")
    assert buckets.take("u") is None and buckets.take("u") is not None


def test_bounded_number_of_keys() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=3, clock=Clock())
    for key in range(10):
        buckets.take(key)
    assert len(buckets._buckets) == 3


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)

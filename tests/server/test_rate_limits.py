"""The per-tenant token bucket, on a fake clock."""

from __future__ import annotations

import pickle

import pytest

from server.errors import RateLimitError
from server.services.rate_limits import TenantRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bursts_then_the_rate_then_refill() -> None:
    clock = Clock()
    limiter = TenantRateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimitError) as info:
        limiter.take("a")
    assert info.value.retry_after == 1 and info.value.status_code == 429
    limiter.take("b")  # another tenant has its own bucket
    clock.now = 0.5  # one token back (2/s)
    limiter.take("a")
    with pytest.raises(RateLimitError):
        limiter.take("a")
    clock.now = 100.0  # refills up to the burst, never beyond
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimitError):
        limiter.take("a")


def test_a_slow_rate_says_how_long_to_wait() -> None:
    limiter = TenantRateLimiter(rate=0.1, burst=1, clock=Clock())
    limiter.take("a")
    with pytest.raises(RateLimitError) as info:
        limiter.take("a")
    assert info.value.retry_after == 10
    again = pickle.loads(pickle.dumps(info.value))  # errors cross process boundaries
    assert again.retry_after == 10 and again.detail == info.value.detail


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0), (-1.0, 5)])
def test_nonsense_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TenantRateLimiter(rate=rate, burst=burst)

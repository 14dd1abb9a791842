"""Per-tenant request rate limits: a token bucket per tenant, in this process.

Each tenant may send ``rate`` requests per second on average and ``burst`` at once;
a request above that is refused with :class:`~server.errors.RateLimitError` (429)
whose ``retry_after`` says when one token will be back. A refused request costs
nothing and is not applied, so clients (the SDK does) simply wait and retry.

Example::

    >>> limiter = TenantRateLimiter(rate=2.0, burst=2, clock=lambda: 0.0)
    >>> limiter.take("ten_a"); limiter.take("ten_a")
    >>> try:
    ...     limiter.take("ten_a")
    ... except RateLimitError as exc:
    ...     print(exc.retry_after)
    1
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from server.errors import RateLimitError

#: Tenants whose buckets are remembered; the least recently seen are forgotten beyond
#: it (a forgotten tenant starts again with a full bucket, which only ever allows more).
MAX_TRACKED_TENANTS = 100_000


class TenantRateLimiter:
    """Token buckets keyed by tenant id (thread-safe)."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, tenant_id: str) -> None:
        """Spend one request of ``tenant_id``'s bucket.

        Raises:
            RateLimitError: the bucket is empty; ``retry_after`` is whole seconds until
                a request is allowed again (at least 1).
        """
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(tenant_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[tenant_id] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise RateLimitError(
                    f"too many requests from this tenant (limit {self.rate:g}/s, bursts of "
                    f"{self.burst}); retry after {wait} s",
                    retry_after=wait,
                )
            self._buckets[tenant_id] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_TRACKED_TENANTS:
                self._buckets.popitem(last=False)


__all__ = ["MAX_TRACKED_TENANTS", "TenantRateLimiter"]

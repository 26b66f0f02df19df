"""Token buckets per key: how many actions a user may start, and how fast.

In memory, per node (click-to-dial requests are served by the node that holds the
phone's registration). Bounded: at most `max_keys` buckets; full buckets (idle keys)
are dropped first when room is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class TokenBuckets:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate  # tokens per second
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key → (tokens, at)

    def take(self, key: Hashable) -> float | None:
        """Take one token: None when allowed, else the seconds until one is back."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._put(key, tokens, now)
            return (1.0 - tokens) / self.rate
        self._put(key, tokens - 1.0, now)
        return None

    def refund(self, key: Hashable) -> None:
        """Give back the token of an action that was refused after all."""
        entry = self._buckets.get(key)
        if entry is not None:
            self._buckets[key] = (min(self.burst, entry[0] + 1.0), entry[1])

    def _put(self, key: Hashable, tokens: float, now: float) -> None:
        if len(self._buckets) >= self.max_keys:
            # The oldest entry was touched longest ago: it has refilled the most.
            del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = (tokens, now)

"""Request pacing for the watcher: a token bucket (steady rate, small burst) and exponential
backoff with full jitter (sleep = uniform(0, min(max, base * 2**failures))), so a thousand Pis
that lost the aggregator together do not come back in lock step.

The clock and the random source are parameters, so tests drive them without sleeping.
"""

from __future__ import annotations

import random
import time
from typing import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> float:
        """Take a token and return 0, or take nothing and return how long until one is ready.

        Nothing is consumed on refusal: a caller that waits the returned time and asks again
        then gets its token (consuming on refusal would starve it for ever)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class Backoff:
    def __init__(self, base: float, maximum: float, rng: random.Random | None = None):
        if base <= 0 or maximum < base:
            raise ValueError("backoff needs 0 < base <= maximum")
        self.base, self.maximum = base, maximum
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        return min(self.maximum, self.base * (2 ** min(self.failures, 30)))

    def next_delay(self) -> float:
        """Record a failure and return the full-jitter delay before the next attempt."""
        delay = self._rng.uniform(0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0

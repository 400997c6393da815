"""Prometheus-style cumulative latency histograms: difference over a window, merge, quantile.

A histogram is `Hist(bounds, counts, total)`: `counts[i]` requests took at most `bounds[i]`
seconds (cumulative, like Prometheus `_bucket{le=...}`), `total` is every request (the `+Inf`
bucket). Pure functions, so the rollout gates are tested without processes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Hist:
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    total: int = 0

    def at(self, le: float) -> int:
        """Cumulative count at `le` (the step function between the bounds)."""
        i = bisect.bisect_right(self.bounds, le)
        return self.counts[i - 1] if i else 0

    def to_json(self) -> list[list[float | int]]:
        return [[b, c] for b, c in zip(self.bounds, self.counts)]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[float, int]], total: int) -> "Hist":
        items = sorted((float(b), int(c)) for b, c in pairs)
        return cls(tuple(b for b, _ in items), tuple(c for _, c in items), int(total))


EMPTY = Hist()


def delta(new: Hist, old: Hist | None) -> Hist:
    """What happened between two readings of one counter. A reading below the older one means the
    node restarted (its counters began again at zero): then all of `new` is the window's."""
    if old is None or old.total == 0:
        return new
    if new.total < old.total or new.bounds != old.bounds or any(n < o for n, o in zip(new.counts, old.counts)):
        return new
    return Hist(new.bounds, tuple(n - o for n, o in zip(new.counts, old.counts)), new.total - old.total)


def merge(hists: Iterable[Hist]) -> Hist:
    """Sum of histograms; differing bucket bounds are merged over the union of bounds."""
    hs = [h for h in hists if h.total or h.counts]
    if not hs:
        return EMPTY
    bounds = tuple(sorted({b for h in hs for b in h.bounds}))
    counts = tuple(sum(h.at(b) for h in hs) for b in bounds)
    return Hist(bounds, counts, sum(h.total for h in hs))


def quantile(h: Hist, q: float) -> float | None:
    """Prometheus `histogram_quantile`: linear within the bucket holding the q-th request; the
    highest finite bound when it falls in +Inf; None without requests."""
    if h.total <= 0:
        return None
    rank = q * h.total
    prev_bound, prev_count = 0.0, 0
    for b, c in zip(h.bounds, h.counts):
        if c >= rank:
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return h.bounds[-1] if h.bounds else None

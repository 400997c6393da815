"""Token bucket and full-jitter backoff, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import random

import pytest

from pifarm.initiator.backoff import Backoff, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_burst_then_paces():
    c = Clock()
    b = TokenBucket(rate=2.0, burst=3, clock=c)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)
    c.t += 10
    assert b.take() == 0.0


def test_waiting_the_returned_time_always_gets_a_token():
    """Regression: a refused take() must not consume, or a paced caller starves for ever."""
    c = Clock()
    b = TokenBucket(rate=1.0, burst=1, clock=c)
    assert b.take() == 0.0
    for _ in range(5):
        wait = b.take()
        assert wait > 0
        c.t += wait
        assert b.take() == 0.0


def test_full_jitter_stays_under_growing_ceiling():
    bo = Backoff(0.5, 8.0, random.Random(1))
    ceilings = []
    for _ in range(8):
        ceil = bo.ceiling()
        delay = bo.next_delay()
        assert 0 <= delay <= ceil
        ceilings.append(ceil)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    bo.reset()
    assert bo.ceiling() == 0.5


def test_jitter_spreads_nodes():
    delays = {round(Backoff(1.0, 60.0, random.Random(i)).next_delay(), 6) for i in range(50)}
    assert len(delays) == 50


def test_bad_parameters_refused():
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)

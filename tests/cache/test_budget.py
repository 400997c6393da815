"""Eviction planning: LRU first, pinned never, refusal when pinned bytes fill the budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pifarm.cache.budget import BlobUse, BudgetExceeded, plan_eviction


def d(i: int) -> str:
    return f"blake3:{i:064x}"


def test_no_budget_or_room_evicts_nothing():
    blobs = [BlobUse(d(1), 10, 1.0)]
    assert plan_eviction(blobs, set(), None, 10**9) == []
    assert plan_eviction(blobs, set(), 100, 90) == []


def test_oldest_unpinned_go_first():
    blobs = [BlobUse(d(1), 40, 3.0), BlobUse(d(2), 40, 1.0), BlobUse(d(3), 40, 2.0)]
    out = plan_eviction(blobs, {d(2)}, 130, 40)
    assert [b.digest for b in out] == [d(3)]


def test_pinned_bytes_over_budget_refuse():
    blobs = [BlobUse(d(1), 80, 1.0), BlobUse(d(2), 10, 0.0)]
    with pytest.raises(BudgetExceeded, match="80 bytes are pinned"):
        plan_eviction(blobs, {d(1)}, 100, 30)


@given(
    sizes=st.lists(st.integers(1, 100), min_size=1, max_size=30),
    pinned_mask=st.lists(st.booleans(), min_size=30, max_size=30),
    budget=st.integers(1, 2000),
    incoming=st.integers(0, 300),
)
def test_plan_fits_or_refuses_and_never_touches_pinned(sizes, pinned_mask, budget, incoming):
    blobs = [BlobUse(d(i), s, float(i % 7)) for i, s in enumerate(sizes)]
    pinned = {b.digest for b, p in zip(blobs, pinned_mask) if p}
    try:
        out = plan_eviction(blobs, pinned, budget, incoming)
    except BudgetExceeded:
        assert sum(b.size for b in blobs if b.digest in pinned) + incoming > budget
        return
    assert not {b.digest for b in out} & pinned
    assert sum(b.size for b in blobs) - sum(b.size for b in out) + incoming <= budget
    if out:  # evicting one fewer would not have been enough (minimal LRU prefix)
        assert sum(b.size for b in blobs) - sum(b.size for b in out[:-1]) + incoming > budget

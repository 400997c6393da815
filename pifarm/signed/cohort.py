"""Rollout cohorts without per-node documents: a stable hash of the node id against a threshold.

Every node computes `bucket(seed, node_id)`, a number in [0, 2**32) that only depends on the two
strings, and is in a rollout's cohort when `bucket < cohort`. The aggregator picks `cohort` for
each wave from the nodes it knows (`threshold_for`), so "1 node" or "25 %" means exactly that
many of them, and a wave only ever grows (the next wave's threshold is never lower). A node that
restarts, reconnects or was offline computes the same answer, so it runs its wave's version.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

SPACE = 2**32  # cohort == SPACE: every node, including ones the aggregator has never seen


def bucket(seed: str, node_id: str) -> int:
    h = hashlib.blake2b(f"{seed}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h[:4], "big")


def member(cohort: int, seed: str, node_id: str) -> bool:
    return cohort >= SPACE or bucket(seed, node_id) < cohort


def wave_size(spec: tuple[str, float], known: int) -> int:
    """How many of `known` nodes a wave ("count", n) or ("percent", p) holds (at least one)."""
    kind, n = spec
    k = int(n) if kind == "count" else math.ceil(known * n / 100.0 - 1e-9)
    return max(1, min(known, k)) if known else 0


def threshold_for(k: int, node_ids: Iterable[str], seed: str, floor: int = 0) -> int:
    """The smallest cohort holding the k lowest-bucket nodes (and never below `floor`)."""
    bs = sorted(bucket(seed, n) for n in set(node_ids))
    if k <= 0 or not bs:
        return floor
    if k >= len(bs):
        return max(floor, bs[-1] + 1)
    return max(floor, bs[k - 1] + 1)

"""Byte budget: which blobs to evict so an incoming blob fits.

Pure planning over a listing, so the policy is unit-tested without a disk. Least recently used
goes first; pinned blobs (referenced by an `active`, `previous` or `prefetched` ref, or part of
an install in flight) are never chosen. If the pinned set alone leaves no room, the install is
refused: serving what is pinned matters more than fetching something new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pifarm.errors import ReadOnlyError


class BudgetExceeded(ReadOnlyError):
    """The pinned blobs plus the incoming one do not fit in `cache.max_bytes`."""


@dataclass(frozen=True)
class BlobUse:
    digest: str
    size: int
    last_used: float  # the blob file's mtime, bumped by Cache.touch()


def plan_eviction(
    blobs: Iterable[BlobUse],
    pinned: set[str],
    max_bytes: int | None,
    incoming: int,
    what: str = "blob",
) -> list[BlobUse]:
    """Blobs to delete, oldest first, so that `incoming` more bytes fit under `max_bytes`."""
    if max_bytes is None:
        return []
    listing = list(blobs)
    used = sum(b.size for b in listing)
    if used + incoming <= max_bytes:
        return []
    pinned_bytes = sum(b.size for b in listing if b.digest in pinned)
    if pinned_bytes + incoming > max_bytes:
        raise BudgetExceeded(
            f"cache budget {max_bytes} bytes is too small for {what} ({incoming} bytes): "
            f"{pinned_bytes} bytes are pinned by active/previous/prefetched refs; "
            f"raise cache.max_bytes or retire versions (serving continues)"
        )
    out: list[BlobUse] = []
    for b in sorted((b for b in listing if b.digest not in pinned), key=lambda b: (b.last_used, b.digest)):
        if used + incoming <= max_bytes:
            break
        out.append(b)
        used -= b.size
    return out

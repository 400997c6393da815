"""Settings of the node cache ([cache] in node.toml; sizes also accept "8GiB" there)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheSettings:
    root: str = "/var/lib/pifarm/cache"
    max_bytes: int | None = None  # None = no budget; else LRU eviction of unpinned blobs
    scrub_interval: float = 86400.0  # seconds between background scrubs; 0 = never
    scrub_rate: int | None = 32 * 2**20  # bytes/s a background scrub may read; None = unlimited
    tamper_watch: bool = True  # watchdog on blobs/: re-fetch what changes behind our back

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.scrub_interval < 0:
            raise ValueError("scrub_interval must be >= 0")

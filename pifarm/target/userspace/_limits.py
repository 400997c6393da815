"""Counting the userspace target's limits when they bite: a log line (at most one per limit per
minute, so a flood cannot fill the journal) and the Prometheus counter
`pifarm_nvme_target_limit_hits_total{limit=...}`."""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger(__name__)

LIMITS = ("connections", "transfer", "log_page", "send_timeout")
LOG_EVERY = 60.0

try:  # prometheus_client is a dependency; keep the target importable without it all the same
    from prometheus_client import Counter as _PromCounter

    _HITS = _PromCounter("pifarm_nvme_target_limit_hits", "Requests the userspace NVMe/TCP target refused or "
                         "connections it closed because a limit was reached", ["limit"])
except Exception:  # pragma: no cover - duplicate registration or no prometheus_client
    _HITS = None


class LimitHits:
    """Per-target counts (tests read `.counts`) plus the process-wide Prometheus counter."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def hit(self, limit: str, detail: str) -> None:
        self.counts[limit] += 1
        if _HITS is not None:
            _HITS.labels(limit).inc()
        now = time.monotonic()
        if now - self._logged.get(limit, -LOG_EVERY) >= LOG_EVERY:
            self._logged[limit] = now
            log.warning("limit %s reached: %s (%d times so far)", limit, detail, self.counts[limit])

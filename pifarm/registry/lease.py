"""A lease in the shared bucket: one holder at a time, through conditional writes, with expiry.

    leases/<name>.json   {"holder": "...", "expires": <unix time>, "term": n}

`hold()` takes a free or expired lease (create with If-None-Match, or replace with If-Match on
the ETag just read) or renews its own; a holder that dies stops renewing, the lease expires
`ttl` seconds later and the next aggregator's `hold()` takes it. Expiry compares wall clocks, so
aggregators must keep them in step (NTP); the term counts hand-overs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from pifarm.errors import NotFound
from pifarm.s3 import conditional

log = logging.getLogger(__name__)


class BucketLease:
    def __init__(self, bucket: Any, name: str, holder: str, *, ttl: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self.b, self.key, self.holder, self.ttl, self.clock = bucket, f"leases/{name}.json", holder, ttl, clock
        self.held = False
        self.current: dict[str, Any] = {}

    def _doc(self, term: int) -> bytes:
        return json.dumps({"holder": self.holder, "expires": self.clock() + self.ttl, "term": term},
                          sort_keys=True).encode()

    def hold(self) -> bool:
        """Acquire or renew; True while this process holds the lease."""
        what = f"lease {self.key}"
        try:
            data, etag = conditional.get_with_etag(self.b, self.key, what)
        except NotFound:
            won = conditional.create(self.b, self.key, self._doc(1), what) is not None
            return self._set(won, {"holder": self.holder, "term": 1} if won else {})
        try:
            cur = json.loads(data)
            holder, expires, term = str(cur["holder"]), float(cur["expires"]), int(cur.get("term", 0))
        except (ValueError, KeyError, TypeError):
            holder, expires, term = "", 0.0, 0
        if holder != self.holder and expires > self.clock():
            return self._set(False, cur)
        new_term = term if holder == self.holder else term + 1
        won = conditional.replace(self.b, self.key, self._doc(new_term), etag, what) is not None
        return self._set(won, {"holder": self.holder, "term": new_term} if won else cur)

    def _set(self, held: bool, cur: dict) -> bool:
        if held and not self.held:
            log.warning("lease %s taken by this aggregator (%s, term %s)", self.key, self.holder, cur.get("term"))
        elif self.held and not held:
            log.warning("lease %s lost to %s", self.key, cur.get("holder", "?"))
        self.held, self.current = held, cur
        return held

    def release(self) -> None:
        """Give the lease up at a clean stop (expired at once), so another takes it without waiting."""
        if not self.held:
            return
        try:
            data, etag = conditional.get_with_etag(self.b, self.key, f"lease {self.key}")
            cur = json.loads(data)
            if cur.get("holder") == self.holder:
                cur["expires"] = 0
                conditional.replace(self.b, self.key, json.dumps(cur, sort_keys=True).encode(), etag,
                                    f"lease {self.key}")
        except Exception:  # best effort: it expires by itself anyway
            pass
        self.held = False

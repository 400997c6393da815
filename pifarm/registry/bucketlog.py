"""The registry's commit log in the S3 bucket: what lets several aggregators share one store.

    revisions/<n>.json   {"revision": n, "state": <statedoc>, "added": [signed manifests],
                          "snapshot": <signed snapshot of revision n>}
                         created with If-None-Match: *, so exactly one writer makes revision n
    snapshot.json        the newest signed snapshot, advanced with If-Match after each revision
                         (a hint for followers and nodes; revisions/ is the truth)

A revision exists once its document does; the writer's SQLite only caches it. A writer that
loses the race for n re-reads the winner's revision and retries on top of it, so the history
stays linear, gap-free and nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pifarm.errors import NotFound
from pifarm.s3 import conditional
from pifarm.s3.layout import SNAPSHOT_KEY
from pifarm.signed.canonical import canonical_bytes

REVISION_PREFIX = "revisions/"
LEASE_PREFIX = "leases/"

REFUSED = ("S3 endpoint {where} ignores If-None-Match, so several aggregators on it would fork the "
           "history: it is refused for multi-aggregator mode ([store] shared = \"yes\"); use an endpoint "
           "with conditional writes (SeaweedFS >= 4, MinIO, Ceph RGW >= 19, AWS S3) or run one aggregator")


def revision_key(n: int) -> str:
    return f"{REVISION_PREFIX}{int(n)}.json"


class BucketLog:
    def __init__(self, store: Any):
        self.b = store.b  # pifarm.s3.bucket.Bucket of the S3 store (its error classes)
        self.location = store.location
        self._snap_etag: str | None = None

    def read(self, n: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.b.get(revision_key(n), f"S3 {self.location}: reading {revision_key(n)}"))
        except NotFound:
            return None

    def create(self, n: int, doc: dict[str, Any]) -> bool:
        """Make revision n; False when another writer made it first."""
        return conditional.create(self.b, revision_key(n), canonical_bytes(doc),
                                  f"S3 {self.location}: creating {revision_key(n)}") is not None

    def listed_head(self) -> int | None:
        """The highest revision listed (a full listing: for rebuilds and a missing snapshot.json)."""
        keys = self.b.list(REVISION_PREFIX, f"S3 {self.location}: listing {REVISION_PREFIX}")
        ns = [int(k[len(REVISION_PREFIX):-5]) for k in keys
              if k.endswith(".json") and k[len(REVISION_PREFIX):-5].isdigit()]
        return max(ns) if ns else None

    def snapshot_changed(self) -> tuple[bool, int | None]:
        """Conditional GET of snapshot.json: (changed since the last call, its revision)."""
        try:
            got = conditional.get_if_changed(self.b, SNAPSHOT_KEY, self._snap_etag,
                                             f"S3 {self.location}: polling {SNAPSHOT_KEY}")
        except NotFound:
            return False, None
        if got is None:
            return False, None
        data, self._snap_etag = got
        try:
            return True, int(json.loads(data)["signed"]["revision"])
        except (ValueError, KeyError, TypeError):
            return True, None

    def advance_snapshot(self, revision: int, data: bytes) -> None:
        """Point snapshot.json at `revision` unless it already shows that one or a newer one."""
        what = f"S3 {self.location}: advancing {SNAPSHOT_KEY}"
        for _ in range(50):
            try:
                cur, etag = conditional.get_with_etag(self.b, SNAPSHOT_KEY, what)
                cur_rev = int(json.loads(cur)["signed"]["revision"])
            except NotFound:
                if conditional.create(self.b, SNAPSHOT_KEY, data, what) is not None:
                    return
                continue
            except (ValueError, KeyError, TypeError):
                cur_rev, etag = -1, None
            if cur_rev >= revision:
                return
            if etag is None:
                self.b.put(SNAPSHOT_KEY, data, what)
                return
            if conditional.replace(self.b, SNAPSHOT_KEY, data, etag, what) is not None:
                return

    def probe(self) -> dict[str, Any]:
        return conditional.probe(self.b, f"{LEASE_PREFIX}probe-{uuid.uuid4().hex}.json")

"""Fleet state in a shared bucket (issue 17): every aggregator shows every node.

    fleet/nodes/<node id>.json   {"first_seen": t, "last_seen": t, "auth": "token", "via": "<aggregator>",
                                  "report": <the node's report, as received>}

Nodes report to whichever aggregator answers. The one that receives a report writes the node's
object when the report differs materially from the bucket's copy (`material`: state, reason,
channel, revision, versions, readiness, errors; not counters, cache use or temperature), and
otherwise as a heartbeat once the bucket's copy is HEARTBEAT report intervals old: a node that
reports every 10 s costs one PUT every second report (20 s), a 50-node farm 2.5 PUT/s in all,
and another aggregator's view of it is at most ~2 intervals and a poll old, inside the 3
intervals after which a node counts as missing. Writes are conditional (If-Match on the ETag
last seen, If-None-Match: * for a new node): a report never replaces a newer one another
aggregator wrote meanwhile. Writing happens on this module's thread, never in the report path.

Every `poll_interval()` seconds (2 s; a quarter of the shortest report interval when that is
shorter, at least 0.25 s) each aggregator lists fleet/nodes/ (ETags included: one request per
1,000 nodes) and GETs only the objects whose ETag changed, merging them into its `Fleet` (the
newest by the node's own clock, then seq, wins). With the bucket unreachable it keeps what it
has (nodes reporting to it stay live, the others age into `missing` by their reports' age),
retries with backoff up to 10 s, and says so in /v1/fleet (`shared`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pifarm.errors import NotFound, PifarmError
from pifarm.registry.fleet import Fleet, NodeRecord, record_from_doc
from pifarm.s3 import conditional
from pifarm.signed.snapshot import iso

log = logging.getLogger(__name__)

PREFIX = "fleet/nodes/"
HEARTBEAT = 1.5  # report intervals: with reports every interval, every second one is written
POLL = 2.0
MIN_POLL = 0.25
MAX_BACKOFF = 10.0


@dataclass
class Known:
    """The bucket's copy of one node's record, as this aggregator last saw or wrote it."""

    etag: str
    newness: tuple[float, int]
    material: str
    last_seen: float


class FleetShare:
    def __init__(self, fleet: Fleet, bucket: Any, name: str, *, poll: float = POLL):
        self.fleet, self.b, self.poll = fleet, bucket, poll
        fleet.name = name
        fleet.on_record.append(self._noted)
        fleet.on_forget.append(self._forgotten)
        self._lock = threading.Lock()
        self._known: dict[str, Known] = {}
        self._pending: set[str] = set()
        self._forget: set[str] = set()
        self._listed: set[str] = set()
        self._min_interval = 10.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.last_poll: float | None = None
        self.puts = self.gets = self.lists = 0

    def key(self, node: str) -> str:
        return f"{PREFIX}{node}.json"

    def poll_interval(self) -> float:
        return min(self.poll, max(MIN_POLL, self._min_interval / 4))

    # -- the report path: decide, never touch the bucket ---------------------------------
    def _noted(self, rec: NodeRecord) -> None:
        fp = rec.report.material()
        with self._lock:
            self._min_interval = min(self._min_interval, rec.report.interval)
            k = self._known.get(rec.node)
            due = k is None or k.material != fp or rec.last_seen - k.last_seen >= HEARTBEAT * rec.report.interval
            wake = due and rec.node not in self._pending
            if due:
                self._pending.add(rec.node)
                self._forget.discard(rec.node)
        if wake:
            self._wake.set()

    def _forgotten(self, node: str) -> None:
        with self._lock:
            self._pending.discard(node)
            self._forget.add(node)
        self._wake.set()

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pifarm-fleet-share", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            stuck, self._thread = self._thread.is_alive(), None
            if stuck:  # still inside a bucket call: no second writer beside it
                return
        if self.error is not None:
            return  # the bucket is not answering: a stop must not wait for its timeouts
        try:  # the last reports received go to the bucket (best effort: the nodes report again)
            self.write_pending()
        except Exception as e:
            log.warning("fleet state not written to %s%s at stop: %s", self.b.location, PREFIX, e)

    def _run(self) -> None:
        clock = time.monotonic
        next_poll, retry_at, backoff = clock(), 0.0, 0.0
        while not self._stop.is_set():
            with self._lock:
                pending = bool(self._pending or self._forget)
            due = next_poll if not pending else min(next_poll, max(retry_at, clock()))
            if due > clock():
                self._wake.wait(due - clock())
                self._wake.clear()
                continue
            try:
                if clock() >= retry_at:
                    self.write_pending()
                if clock() >= next_poll:
                    self.sync()
                    next_poll = clock() + self.poll_interval()
                if self.error is not None:
                    log.warning("fleet state in %s%s reachable again", self.b.location, PREFIX)
                self.error, backoff = None, 0.0
            except Exception as e:  # keep what we have; back off while the bucket fails
                if self.error is None:
                    log.warning("fleet state in %s%s unreachable (backing off; this aggregator shows what it "
                                "has): %s", self.b.location, PREFIX, e)
                self.error = str(e) or type(e).__name__
                backoff = min(max(backoff * 2, self.poll_interval()), MAX_BACKOFF)
                retry_at = next_poll = clock() + backoff

    # -- writing ---------------------------------------------------------------------------------
    def write_pending(self) -> None:
        with self._lock:
            nodes, forgets = sorted(self._pending), sorted(self._forget)
            self._pending.clear()
            self._forget.clear()
        try:
            while forgets:
                self.b.delete(self.key(forgets[0]), f"forgetting {self.b.location}{self.key(forgets[0])}")
                with self._lock:
                    self._known.pop(forgets[0], None)
                    self._listed.discard(forgets[0])
                forgets.pop(0)
            while nodes:
                rec = self.fleet.record_of(nodes[0])
                if rec is not None:
                    self._put(rec)
                nodes.pop(0)
        except BaseException:
            with self._lock:  # what was not written is written at the next try
                self._pending.update(n for n in nodes if n not in self._forget)
                self._forget.update(forgets)
            raise

    def _put(self, rec: NodeRecord) -> None:
        key, data, fp = self.key(rec.node), rec.entry(), rec.report.material()
        what = f"writing {self.b.location}{key}"
        for _ in range(5):
            with self._lock:
                k = self._known.get(rec.node)
            if k is not None and k.newness >= rec.newness:
                return  # the bucket already holds this report or a newer one
            etag = conditional.create(self.b, key, data, what) if k is None else \
                conditional.replace(self.b, key, data, k.etag, what)
            self.puts += 1
            if etag is not None:
                with self._lock:
                    self._known[rec.node] = Known(etag.strip('"'), rec.newness, fp, rec.last_seen)
                return
            # another aggregator wrote it meanwhile: read theirs (the newer one stays)
            try:
                got, etag = conditional.get_with_etag(self.b, key, f"reading {self.b.location}{key}")
            except NotFound:
                with self._lock:
                    self._known.pop(rec.node, None)
                continue
            self.gets += 1
            self._take(rec.node, got, etag)
        log.warning("fleet: gave up writing %s after 5 races; the next report tries again", key)

    # -- reading ---------------------------------------------------------------------------------
    def _take(self, node: str, data: bytes, etag: str) -> None:
        """Merge one bucket object into the fleet and remember its ETag (a bad one is skipped until
        it changes)."""
        etag = etag.strip('"')
        try:
            doc = json.loads(data)
            rec = record_from_doc(doc)
            if rec.node != node:
                raise ValueError(f"it holds node {rec.node}")
        except (PifarmError, KeyError, TypeError, ValueError) as e:
            log.warning("fleet: %s%s skipped: %s", self.b.location, self.key(node), e)
            with self._lock:
                self._known[node] = Known(etag, (float("-inf"), -1), "", 0.0)
            return
        self.fleet.merge(rec)
        with self._lock:
            self._known[node] = Known(etag, rec.newness, rec.report.material(), rec.last_seen)
            self._min_interval = min(self._min_interval, rec.report.interval)

    def _list(self) -> dict[str, str]:
        """{node id: ETag} of every object under fleet/nodes/."""
        listed = self.b.list_meta(PREFIX, f"listing {self.b.location}{PREFIX}")
        return {name[:-5]: etag for name, (etag, _age) in ((k[len(PREFIX):], m) for k, m in listed.items())
                if name.endswith(".json") and "/" not in name}

    def sync(self) -> None:
        """One look at the bucket: merge what changed, drop what another aggregator forgot."""
        listed = self._list()
        self.lists += 1
        for node, etag in listed.items():
            with self._lock:
                k = self._known.get(node)
            if k is not None and k.etag == etag:
                continue
            try:
                got, etag = conditional.get_with_etag(self.b, self.key(node), f"reading {self.b.location}"
                                                                               f"{self.key(node)}")
            except NotFound:
                continue
            self.gets += 1
            self._take(node, got, etag)
        with self._lock:
            gone = [(n, self._known.pop(n, None)) for n in self._listed - set(listed)
                    if n not in self._pending]
            self._listed = set(listed)
        for node, k in gone:
            if k is not None and self.fleet.drop(node, k.newness):
                log.info("fleet: node %s forgotten (its record left the bucket)", node)
        self.last_poll = time.time()

    def status(self) -> dict[str, Any]:
        return {"bucket": f"{self.b.location}{PREFIX}", "reachable": self.error is None, "error": self.error,
                "last_poll": None if self.last_poll is None else iso(datetime.fromtimestamp(self.last_poll,
                                                                                              timezone.utc)),
                "poll_interval": self.poll_interval(), "puts": self.puts, "gets": self.gets, "lists": self.lists}

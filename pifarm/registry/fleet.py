"""Fleet state on the aggregator: the last report of every node, first and last seen.

Kept in memory and written to `<data>/fleet/nodes.json` (durable write) at most every
`flush_interval` seconds and on stop, so 1,000 nodes reporting every 10 s cost one write every
few seconds, not a hundred (joined from the reports' bytes as received, not re-encoded). A crash loses at most the last few seconds of reports, which
the nodes send again anyway; first-seen times survive.

A node is `missing` once nothing came from it for 3 of its own report intervals; the next report
makes it whatever that report says again (ready / degraded / not-ready).

With several aggregators on one bucket (issue 17, `fleetshare`) records also come from the
bucket (`merge`): the newest report of a node wins by the node's own clock (`sent`, then `seq`),
and its age counts from when the aggregator that received it got it, whichever that was.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pifarm.durable import atomic_write
from pifarm.errors import NotFound, PifarmError, UsageError
from pifarm.fleetwire.report import ModelReport, Report, report_from_json
from pifarm.signed.snapshot import iso
from datetime import datetime, timezone

log = logging.getLogger(__name__)

MISSING_AFTER = 3  # report intervals without a report


def _iso(t: float) -> str:
    return iso(datetime.fromtimestamp(t, timezone.utc))


@dataclass
class NodeRecord:
    report: Report
    first_seen: float
    last_seen: float
    peer: str = ""  # how it authenticated: "token" or "mtls"
    raw: bytes = b""  # the report as received (checked): written back as is, never re-serialised
    heard: float = 0.0  # last_seen, or the aggregator's start for a record loaded from disk
    via: str = ""  # shared bucket: the aggregator that received the report

    def entry(self) -> bytes:
        """This node's entry in nodes.json (and, shared, its fleet/nodes/<id>.json)."""
        raw = self.raw or json.dumps(self.report.to_json(), separators=(",", ":")).encode()
        head = {"first_seen": self.first_seen, "last_seen": self.last_seen, "auth": self.peer}
        if self.via:
            head["via"] = self.via
        return json.dumps(head)[:-1].encode() + b',"report":' + raw + b"}"

    @property
    def newness(self) -> tuple[float, int]:
        """Which of two records of a node is newer: the node's clock, else the receipt time; then seq."""
        return (self.report.sent if self.report.sent is not None else self.last_seen, self.report.seq)

    @property
    def node(self) -> str:
        return self.report.node

    def state(self, now: float) -> str:
        # the aggregator's own downtime does not make its nodes missing: after a restart the
        # count starts at the start
        if now - max(self.last_seen, self.heard) > MISSING_AFTER * self.report.interval:
            return "missing"
        return self.report.state

    def to_json(self, now: float) -> dict[str, Any]:
        out = {"node": self.node, "state": self.state(now), "first_seen": _iso(self.first_seen),
               "last_seen": _iso(self.last_seen), "seconds_since": round(max(0.0, now - self.last_seen), 3),
               "auth": self.peer, "report": self.report.to_json()}
        if self.via:
            out["via"] = self.via
        return out


def record_from_doc(doc: Any) -> NodeRecord:
    """A record as written to the shared bucket (`NodeRecord.entry`); PifarmError, KeyError,
    TypeError or ValueError when it is not one."""
    rep = report_from_json(doc["report"])
    last = float(doc["last_seen"])
    # heard = last_seen: its age counts from its receipt by whichever aggregator, not from now
    return NodeRecord(rep, float(doc["first_seen"]), last, str(doc.get("auth", "")),
                      json.dumps(doc["report"], separators=(",", ":")).encode(), heard=last,
                      via=str(doc.get("via", "")))


@dataclass(frozen=True)
class NodeView:
    """What a rollout looks at for one node and one model."""

    node: str
    missing: bool
    channel: str
    model: ModelReport | None


class Fleet:
    def __init__(self, data_dir: str | Path, *, flush_interval: float = 5.0, clock: Callable[[], float] = time.time):
        self.path = Path(data_dir) / "fleet" / "nodes.json"
        self.flush_interval = flush_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._dirty = False
        self._flushed = 0.0
        self.reports = 0
        #: called when a report makes the state dirty (clean -> dirty only): the rollout engine's
        #: thread, which flushes, sleeps on an event until there is something to write (issue 19)
        self.on_dirty: Callable[[], None] | None = None
        #: shared bucket (issue 17): this aggregator's name in the records it receives, and who
        #: hears of each report received and each node forgotten (`fleetshare` writes them there)
        self.name = ""
        self.on_record: list[Callable[[NodeRecord], None]] = []
        self.on_forget: list[Callable[[str], None]] = []
        self._load()
        started = clock()
        for rec in self._nodes.values():
            rec.heard = started

    # -- persistence ----------------------------------------------------------------------
    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("fleet state %s unreadable (%s); starting empty", self.path, e)
            return
        for node, rec in (doc.get("nodes") or {}).items():
            try:
                self._nodes[node] = NodeRecord(report_from_json(rec["report"]), float(rec["first_seen"]),
                                               float(rec["last_seen"]), str(rec.get("auth", "")),
                                               json.dumps(rec["report"], separators=(",", ":")).encode(),
                                               via=str(rec.get("via", "")))
            except (PifarmError, KeyError, TypeError, ValueError) as e:
                log.warning("fleet state: node %s dropped (%s)", node, e)

    def flush_due(self) -> float | None:
        """Seconds until a pending write is due (0: now); None when there is nothing to write."""
        with self._lock:
            if not self._dirty:
                return None
            return max(0.0, self._flushed + self.flush_interval - self.clock())

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        with self._lock:
            if not self._dirty or (not force and now - self._flushed < self.flush_interval):
                return
            recs = list(self._nodes.values())
            self._dirty, self._flushed = False, now
        # joined from each report's bytes as received: 1,000 nodes cost a join, not a re-encode
        data = b'{"nodes":{' + b",".join(json.dumps(r.node).encode() + b":" + r.entry() for r in recs) + b"}}"
        try:
            atomic_write(self.path, data)
        except OSError as e:
            log.error("cannot write fleet state %s: %s", self.path, e)
            with self._lock:
                self._dirty = True

    # -- reports --------------------------------------------------------------------------
    def record(self, report: Report, auth: str = "token", raw: bytes = b"") -> NodeRecord:
        now = self.clock()
        with self._lock:
            old = self._nodes.get(report.node)
            rec = NodeRecord(report, old.first_seen if old else now, now, auth, raw, via=self.name)
            self._nodes[report.node] = rec
            woke, self._dirty = not self._dirty, True
            self.reports += 1
        if woke and self.on_dirty is not None:
            self.on_dirty()
        for hook in self.on_record:
            hook(rec)
        if old is None:
            log.info("fleet: new node %s (%s) at %s", report.node, report.hostname, report.address)
        return rec

    def merge(self, rec: NodeRecord) -> bool:
        """A node's record from the shared bucket (`record_from_doc`): taken when it is newer than
        the one held (True), else only its earlier first-seen time is kept."""
        rep, first = rec.report, rec.first_seen
        with self._lock:
            old = self._nodes.get(rep.node)
            if old is not None:
                rec.first_seen = min(first, old.first_seen)
                if old.newness >= rec.newness:
                    old.first_seen = min(old.first_seen, first)
                    return False
            self._nodes[rep.node] = rec
            woke, self._dirty = not self._dirty, True
        if woke and self.on_dirty is not None:
            self.on_dirty()
        if old is None:
            log.info("fleet: node %s (%s) known from the bucket (reported to %s)", rep.node, rep.hostname,
                     rec.via or "another aggregator")
        return True

    def record_of(self, node: str) -> NodeRecord | None:
        with self._lock:
            return self._nodes.get(node)

    def drop(self, node: str, unless_newer_than: tuple[float, int]) -> bool:
        """Forgotten on another aggregator (its bucket record deleted): drop the record unless this
        aggregator received a newer report since."""
        with self._lock:
            rec = self._nodes.get(node)
            if rec is None or rec.newness > unless_newer_than:
                return False
            del self._nodes[node]
            self._dirty = True
        return True

    def forget(self, node: str) -> str:
        with self._lock:
            nid = self._resolve(node)
            del self._nodes[nid]
            self._dirty = True
        self.flush(force=True)
        for hook in self.on_forget:
            hook(nid)
        return nid

    # -- reads ----------------------------------------------------------------------------
    def _resolve(self, node: str) -> str:
        """A node id, a unique hostname or a unique id prefix (what an operator types)."""
        if node in self._nodes:
            return node
        hits = [n for n, r in self._nodes.items() if r.report.hostname == node] or \
               [n for n in self._nodes if len(node) >= 4 and n.startswith(node)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise NotFound(f"no node {node!r} in the fleet (see `pifarm fleet ls`)")
        raise UsageError(f"{node!r} names {len(hits)} nodes ({', '.join(sorted(hits)[:4])}); give the node id")

    def get(self, node: str) -> dict[str, Any]:
        with self._lock:
            return self._nodes[self._resolve(node)].to_json(self.clock())

    def all(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            recs = list(self._nodes.values())
        return [r.to_json(now) for r in sorted(recs, key=lambda r: (r.report.hostname, r.node))]

    def views(self, model: str) -> list[NodeView]:
        now = self.clock()
        with self._lock:
            recs = list(self._nodes.values())
        return [NodeView(r.node, r.state(now) == "missing", r.report.channel, r.report.models.get(model))
                for r in recs if model in r.report.models]

    def counts(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """(nodes by state, nodes by (model, active version)) for the metrics."""
        now = self.clock()
        with self._lock:
            recs = list(self._nodes.values())
        states: dict[str, int] = {s: 0 for s in ("ready", "degraded", "not-ready", "missing")}
        versions: dict[tuple[str, str], int] = {}
        for r in recs:
            st = r.state(now)
            states[st] = states.get(st, 0) + 1
            if st == "missing":
                continue
            for name, m in r.report.models.items():
                key = (name, str(m.serving if m.serving is not None else m.active))
                versions[key] = versions.get(key, 0) + 1
        return states, versions

"""The aggregator as tracker: which nodes hold (or are fetching) which blob, for the peer source.

    GET  /v1/peers?blob=<digest>&port=<p>[&rack=r][&complete=1][&limit=n][&tls=1]   (node auth)
      -> {"blob", "token", "interval", "peers": [{"node", "url", "rack", "complete"}]}
    POST /v1/peers/bad {"blob", "node", "reason"}                            (node auth)

Asking is announcing: the caller joins the blob's swarm at http(s)://<its address as seen here, or
`host`>:<port> (https with tls=1: its piece server wants the farm's client certificates) and stays listed while it asks again within TTL seconds. Nodes whose reports say
a version holding the blob is active/previous/prefetched are listed as complete too (at the piece
address they last announced). The list is bounded and shuffled, with the caller's rack first.

Who may ask: a node, as in reports (its client certificate under mTLS, else its report token
with `X-Pifarm-Node: <node id>`). The answer carries the blob's swarm token, HMAC(key, blob):
peers serve a blob only to requests bearing its token, so only enrolled nodes get pieces. A peer
reported for a bad piece is left out of that blob's list for BAN seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel

from pifarm.errors import Forbidden, Unauthorized, UsageError
from pifarm.fleetwire.report import NODE_ID_RE
from pifarm.signed.integrity import digest_hex

log = logging.getLogger(__name__)

TTL = 60.0  # seconds an announce keeps a node listed
INTERVAL = 5.0  # what nodes are told: ask again this often while fetching
BAN = 600.0  # seconds a peer reported for a bad piece stays out of that blob's list
MAX_LIMIT = 50
MAX_SWARMS = 4096  # bounds memory: the oldest swarm is forgotten beyond this


@dataclass
class Member:
    node: str
    url: str
    rack: str
    complete: bool
    seen: float


class Tracker:
    def __init__(self, fleet_service, clock=time.monotonic):
        self.service = fleet_service  # pifarm.registry.fleet_api.FleetService: node auth, reports, registry
        self.clock = clock
        self._key = hmac.new(fleet_service.key, b"pifarm peer swarm", hashlib.sha256).digest()
        self._lock = threading.Lock()
        self._swarms: dict[str, dict[str, Member]] = {}
        self._urls: dict[str, tuple[str, str]] = {}  # node -> (piece url, rack) of its last announce
        self._banned: dict[tuple[str, str], float] = {}
        self._held: tuple[int, dict[str, set[tuple[str, int]]]] = (-1, {})  # (revision, blob -> versions)
        self.announces = 0
        self.bad_reports = 0

    def swarm_token(self, blob: str) -> str:
        return hmac.new(self._key, blob.encode(), hashlib.sha256).hexdigest()

    # -- auth -----------------------------------------------------------------------------
    def node_of(self, authorization: str | None, node_header: str | None, peer: dict | None) -> str:
        svc = self.service
        if peer:
            node = svc._node_of_cert(peer)
            if node is None:
                raise Forbidden("the client certificate names no enrolled node; enroll it again")
            return node
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip() or not node_header:
            raise Unauthorized("asking for peers needs the node's client certificate (mTLS) or its report token "
                               "('Authorization: Bearer <token>' with 'X-Pifarm-Node: <node id>')")
        if not NODE_ID_RE.match(node_header):
            raise UsageError(f"X-Pifarm-Node {node_header[:80]!r} is not a node id")
        from pifarm.registry.fleet_api import node_token

        if not secrets.compare_digest(value.strip().encode(), node_token(svc.key, node_header).encode()):
            raise Forbidden(f"the token is not node {node_header}'s report token")
        return node_header

    # -- announce and list ----------------------------------------------------------------
    def peers(self, node: str, blob: str, host: str, port: int, rack: str = "", complete: bool = False,
              limit: int = 30, tls: bool = False) -> dict[str, Any]:
        digest_hex(blob)
        if not 1 <= port <= 65535:
            raise UsageError(f"port must be 1..65535, got {port}")
        if not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if len(rack) > 64:
            raise UsageError("rack label longer than 64 characters")
        now = self.clock()
        url = f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"
        with self._lock:
            self.announces += 1
            self._urls[node] = (url, rack)
            swarm = self._swarms.pop(blob, None) or {}
            self._swarms[blob] = swarm  # re-inserted: dict order is least recently asked first
            while len(self._swarms) > MAX_SWARMS:
                self._swarms.pop(next(iter(self._swarms)))
            old = swarm.get(node)
            swarm[node] = Member(node, url, rack, complete or bool(old and old.complete and old.url == url), now)
            members = [m for m in swarm.values() if now - m.seen <= TTL and m.node != node]
            listed = {m.node for m in members}
            for other in self._holders(blob):
                if other != node and other not in listed and other in self._urls:
                    u, r = self._urls[other]
                    members.append(Member(other, u, r, True, now))
            members = [m for m in members if self._banned.get((blob, m.node), 0) <= now]
        random.shuffle(members)
        # same rack first, then nodes that hold the whole blob (a stable sort keeps the shuffle)
        members.sort(key=lambda m: (not (rack and m.rack == rack), not m.complete))
        return {"blob": blob, "token": self.swarm_token(blob), "interval": INTERVAL,
                "peers": [{"node": m.node, "url": m.url, "rack": m.rack, "complete": m.complete}
                          for m in members[:limit]]}

    def bad(self, reporter: str, blob: str, node: str, reason: str) -> dict[str, Any]:
        digest_hex(blob)
        with self._lock:
            self.bad_reports += 1
            self._banned[(blob, node)] = self.clock() + BAN
            if len(self._banned) > MAX_SWARMS:
                now = self.clock()
                self._banned = {k: t for k, t in self._banned.items() if t > now}
            (self._swarms.get(blob) or {}).pop(node, None)
        log.warning("tracker: node %s reports peer %s for blob %s: %s", reporter, node, blob, reason[:200])
        return {"blob": blob, "node": node, "banned_for": BAN}

    def _holders(self, blob: str) -> list[str]:
        """Nodes whose last report names a version (active, previous or prefetched) with this blob."""
        try:
            versions = self._versions_of(blob)
            if not versions:
                return []
            out = []
            for rec in self.service.fleet.all():
                if rec.get("state") == "missing":
                    continue
                for name, m in (rec["report"].get("models") or {}).items():
                    if any((name, m.get(k)) in versions for k in ("active", "previous", "prefetched")):
                        out.append(rec["node"])
                        break
            return out
        except Exception:  # reports are a hint only; announces alone still make a swarm
            log.exception("tracker: cannot read holders of %s from reports", blob)
            return []

    def _versions_of(self, blob: str) -> set[tuple[str, int]]:
        registry = getattr(self.service.engine, "registry", None)
        if registry is None:
            return set()
        rev = registry.revision
        if self._held[0] != rev:
            index: dict[str, set[tuple[str, int]]] = {}
            for row in registry.db.versions():
                for _path, digest, _size in registry.db.files(row.name, row.version):
                    index.setdefault(digest, set()).add((row.name, row.version))
            self._held = (rev, index)
        return self._held[1].get(blob, set())


class BadPeer(BaseModel):
    blob: str
    node: str
    reason: str = ""


def tracker_router(tracker: Tracker):
    router = APIRouter(tags=["peers"])

    def who(request: Request, authorization: str | None, x_pifarm_node: str | None) -> str:
        return tracker.node_of(authorization, x_pifarm_node, (request.scope.get("state") or {}).get("tls_peer"))

    @router.get("/v1/peers", summary="Peers for a blob (and announce: the caller joins its swarm)")
    async def peers(request: Request, blob: str, port: int, rack: str = "", complete: bool = False,
                    limit: int = Query(30), host: str = "", tls: bool = False,
                    authorization: str | None = Header(None),
                    x_pifarm_node: str | None = Header(None)) -> dict:
        node = who(request, authorization, x_pifarm_node)
        seen = request.client.host if request.client else ""
        if host and (len(host) > 253 or not all(c.isalnum() or c in ".-:" for c in host)):
            raise UsageError(f"host {host[:80]!r} is not a host name or address")
        return tracker.peers(node, blob, host or seen, port, rack, complete, limit, tls)

    @router.post("/v1/peers/bad", summary="Report a peer that sent a piece failing its digest")
    async def bad(request: Request, body: BadPeer, authorization: str | None = Header(None),
                  x_pifarm_node: str | None = Header(None)) -> dict:
        node = who(request, authorization, x_pifarm_node)
        return tracker.bad(node, body.blob, body.node, body.reason)

    return router

"""The fleet and rollout endpoints of the aggregator, over one `FleetService`.

    POST   /v1/fleet/report              a node's report (node auth; 413 above the bound, 400 malformed)
    GET    /v1/fleet                     every node: state, versions, last seen
    GET    /v1/fleet/{node}              one node (id, unique hostname or unique id prefix)
    DELETE /v1/fleet/{node}              forget a node (token)
    POST   /v1/fleet/tokens/{node}       the report token of a node id (token)
    GET    /v1/rollouts                  active rollouts and the history
    GET    /v1/rollouts/{model}          the running (else the last) rollout of a model
    POST   /v1/rollouts/{model}          start {version, waves, bake, ...} (token)
    POST   /v1/rollouts/{model}/pause|resume|abort                        (token)

A node reports only as itself: over mTLS its certificate's serial names its enrolled host record
(whose host id is its node id); otherwise its report token, `HMAC(<data>/fleet/node-token.key,
node id)`, which `pifarm fleet token NODE` prints. Reports are answered below the framework
(`ReportPath`): 1,000 nodes every 10 s is 100 requests a second on a small aggregator.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pifarm.durable import atomic_write
from pifarm.errors import Forbidden, PifarmError, TooLarge, Unauthorized, UsageError
from pifarm.fleetwire.report import MAX_BYTES, parse_report
from pifarm.registry.fleet import Fleet
from pifarm.registry.rollout import Gates, RolloutEngine

log = logging.getLogger(__name__)

TOKEN_KEY = "node-token.key"
REPORT_PATH = "/v1/fleet/report"


def load_token_key(data_dir: str | os.PathLike) -> bytes:
    """The aggregator's key for node report tokens, created (0600) on first use."""
    p = Path(data_dir) / "fleet" / TOKEN_KEY
    try:
        return bytes.fromhex(p.read_text().strip())
    except FileNotFoundError:
        atomic_write(p, secrets.token_hex(32).encode() + b"\n", mode=0o600)
        return bytes.fromhex(p.read_text().strip())
    except ValueError as e:
        raise PifarmError(f"{p} is not a hex key; delete it to make a new one (every node token changes)") from e


def node_token(key: bytes, node: str) -> str:
    return "pfn1." + hmac.new(key, node.encode(), hashlib.sha256).hexdigest()[:40]


class FleetService:
    """Fleet state, rollouts, node authentication and metrics of one aggregator."""

    def __init__(self, registry, data_dir: str | os.PathLike, admin_token: str | None, *,
                 tick: float | None = None, flush_interval: float = 5.0):
        self.data_dir = Path(data_dir)
        self.fleet = Fleet(self.data_dir, flush_interval=flush_interval)
        self.engine = RolloutEngine(registry, self.fleet, self.data_dir, **({} if tick is None else {"tick": tick}))
        self.admin_token = admin_token
        self.key = load_token_key(self.data_dir)
        self._serials: dict[str, str] = {}
        self.share: Any = None  # FleetShare: fleet state in a shared bucket (issue 17)

    def share_fleet(self, bucket: Any, name: str) -> None:
        """Several aggregators on one bucket: node records go there and come from there, so every
        aggregator (and the rollout leader) sees every node, whichever one it reports to."""
        from pifarm.registry.fleetshare import FleetShare

        self.share = FleetShare(self.fleet, bucket, name)

    def start(self) -> None:
        if self.share is not None:
            self.share.start()
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        if self.share is not None:
            self.share.stop()
        self.fleet.flush(force=True)

    # -- authentication -------------------------------------------------------------------
    def require_admin(self, authorization: str | None) -> None:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("this request needs 'Authorization: Bearer <token>' (see the aggregator's api-token)")
        if not self.admin_token or not secrets.compare_digest(value.strip().encode(), self.admin_token.encode()):
            raise Forbidden("the bearer token is not valid for writes on this registry")

    def _node_of_cert(self, peer: dict) -> str | None:
        serial = str(peer.get("serialNumber", "")).lower().lstrip("0")
        if not serial:
            return None
        if serial not in self._serials:
            from pifarm.pki.certs import read_hosts

            self._serials = {r.cert_serial.lower().lstrip("0"): r.hostid for r in read_hosts(self.data_dir)}
        return self._serials.get(serial)

    def report(self, body: bytes, authorization: str | None, peer: dict | None) -> dict[str, Any]:
        """Check and record one report; PifarmError (with its HTTP status) otherwise."""
        token = None
        if not peer:
            scheme, _, value = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("a report needs the node's client certificate (mTLS) or "
                                   "'Authorization: Bearer <node token>' (`pifarm fleet token NODE`)")
            token = value.strip()
        rep = parse_report(body)
        if peer:
            named = self._node_of_cert(peer)
            if named is None:
                raise Forbidden("the client certificate names no enrolled node; enroll it again")
            if named != rep.node:
                raise Forbidden(f"the client certificate names node {named}; it may not report as {rep.node}")
            how = "mtls"
        else:
            if not secrets.compare_digest(token.encode(), node_token(self.key, rep.node).encode()):
                raise Forbidden(f"the token is not node {rep.node}'s report token; a node reports only as itself")
            how = "token"
        rec = self.fleet.record(rep, how, body)
        return {"node": rec.node, "state": rec.state(rec.last_seen), "received": True}


class ReportPath:
    """`POST /v1/fleet/report` below the framework: bounded body read, then `FleetService.report`."""

    def __init__(self, app, service: FleetService):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != REPORT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        status, body = 200, b""
        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > MAX_BYTES:
                raise TooLarge(f"report of {int(declared)} bytes exceeds the bound of {MAX_BYTES} bytes")
            chunks, n = [], 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                n += len(chunk)
                if n > MAX_BYTES:
                    raise TooLarge(f"report exceeds the bound of {MAX_BYTES} bytes")
                chunks.append(chunk)
                if not msg.get("more_body"):
                    break
            state = scope.get("state") or {}
            auth = headers.get(b"authorization", b"").decode("latin-1")
            out = self.service.report(b"".join(chunks), auth or None, state.get("tls_peer"))
            body = json.dumps(out).encode()
        except PifarmError as e:
            status = e.http_status
            body = json.dumps({"error": str(e), "kind": type(e).__name__}).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            raw.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class StartBody(BaseModel):
    version: int
    waves: str = Field("1,25%,100%", max_length=200)
    bake: float = Field(300.0, ge=0)
    max_error_rate: float = Field(0.01, ge=0)
    max_latency_ratio: float = Field(1.5, ge=1)
    min_requests: int = Field(100, ge=0)
    max_missing: int | None = Field(None, ge=0)
    activate_timeout: float = Field(600.0, ge=0)


def fleet_router(service: FleetService):
    router = APIRouter(tags=["fleet"])

    @router.post(REPORT_PATH, summary="A node's report (answered by ReportPath; declared here for the schema)")
    async def report(request: Request, authorization: str | None = Header(None)) -> dict:
        body = await request.body()
        return service.report(body, authorization, (request.scope.get("state") or {}).get("tls_peer"))

    @router.get("/v1/fleet", summary="Every node: state, versions, last seen")
    async def fleet() -> dict:
        if service.share is not None:  # where the other aggregators' nodes come from, and whether it answers
            return {"nodes": service.fleet.all(), "shared": service.share.status()}
        return {"nodes": service.fleet.all()}

    @router.get("/v1/fleet/{node}")
    async def node(node: str) -> dict:
        return service.fleet.get(node)

    @router.delete("/v1/fleet/{node}")
    async def forget(node: str, authorization: str | None = Header(None)) -> dict:
        service.require_admin(authorization)
        return {"forgotten": service.fleet.forget(node)}

    @router.post("/v1/fleet/tokens/{node}", summary="The report token of a node id")
    async def token(node: str, authorization: str | None = Header(None)) -> dict:
        service.require_admin(authorization)
        from pifarm.fleetwire.report import NODE_ID_RE

        if not NODE_ID_RE.match(node):
            raise UsageError(f"{node!r} is not a node id (letters, digits, . _ : -; at most 128)")
        return {"node": node, "token": node_token(service.key, node)}

    @router.get("/v1/rollouts")
    async def rollouts() -> dict:
        return service.engine.all()

    @router.get("/v1/rollouts/{model}")
    async def rollout(model: str) -> dict:
        return service.engine.status(model)

    @router.post("/v1/rollouts/{model}", status_code=201)
    async def start(model: str, body: StartBody, authorization: str | None = Header(None)) -> dict:
        service.require_admin(authorization)
        gates = Gates(body.bake, body.max_error_rate, body.max_latency_ratio, body.min_requests, body.max_missing,
                      body.activate_timeout)
        return await run_in_threadpool(service.engine.begin, model, body.version, body.waves, gates)

    for verb in ("pause", "resume", "abort"):
        def make(verb=verb):
            async def act(model: str, authorization: str | None = Header(None)) -> dict:
                service.require_admin(authorization)
                return await run_in_threadpool(getattr(service.engine, verb), model)
            act.__name__ = f"rollout_{verb}"
            return act
        router.post(f"/v1/rollouts/{{model}}/{verb}")(make())
    return router


class FleetCollector:
    """Prometheus: nodes by state, nodes per model version, rollout state."""

    def __init__(self, service: FleetService):
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        states, versions = self.service.fleet.counts()
        g = GaugeMetricFamily("pifarm_fleet_nodes", "Nodes by state", labels=["state"])
        for s, n in sorted(states.items()):
            g.add_metric([s], n)
        yield g
        g = GaugeMetricFamily("pifarm_fleet_model_nodes", "Nodes serving each model version", labels=["model", "version"])
        for (m, v), n in sorted(versions.items()):
            g.add_metric([m, v], n)
        yield g
        yield CounterMetricFamily("pifarm_fleet_reports", "Reports received", value=self.service.fleet.reports)
        g = GaugeMetricFamily("pifarm_rollout_active", "1 per running or paused rollout",
                              labels=["model", "version", "state", "phase"])
        w = GaugeMetricFamily("pifarm_rollout_wave", "Current wave (1-based) of a rollout", labels=["model"])
        for m, r in sorted(self.service.engine.all()["active"].items()):
            g.add_metric([m, str(r["version"]), r["state"], r["phase"]], 1)
            w.add_metric([m], r["wave"] + 1)
        yield g
        yield w


def peer_cert_protocol():
    """uvicorn's HTTP protocol, putting the verified client certificate of each connection into
    the request scope's state (`tls_peer`): ASGI has no standard place for it."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class PeerCertProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport):
            super().connection_made(transport)
            peer = transport.get_extra_info("peercert")
            if peer:
                self.app_state = {**self.app_state, "tls_peer": peer}

    return PeerCertProtocol

"""The fleet view's routes, over one `FarmView` (plain callables the aggregator wires up).

    GET /                              -> /ui
    GET /ui[?refresh=SECONDS]          the fleet page (refreshes itself every `refresh` s, default 5)
    GET /ui/fragment                   the page's live part (what fleet.js swaps in)
    GET /ui/nodes/{node}               one node in full (id, unique hostname or id prefix)
    GET /ui/static/{fleet.js|fleet.css|favicon.svg}
    GET /v1/fleet/prometheus-sd[?role=node|aggregator]   Prometheus http_sd targets

Only GETs: the page has no write buttons. Query strings are small or refused (414), unknown
parameters are refused (400), and every HTML answer carries a CSP that allows no inline script.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pifarm.errors import PifarmError, UsageError
from pifarm.registry.fleetview import page, sd

MAX_QUERY = 1024  # bytes of query string; nothing here takes more than a number or a role
STATIC = {"fleet.js": "text/javascript; charset=utf-8", "fleet.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class FarmView:
    """What the page reads; each a cheap, thread-safe read of the aggregator's state."""

    nodes: Callable[[], list[dict]]
    node: Callable[[str], dict]           # raises NotFound / UsageError
    rollouts: Callable[[], dict]
    models: Callable[[], dict]            # registry models, each with "exports" {version: {volume, nsid}}
    aggregator: Callable[[], dict]        # hostname, version, revision, read_only
    target: Callable[[], dict]            # enabled, subsystem, ports, allowed_hosts, last_error, drives
    refresh: float = 5.0
    hostname: str = field(default_factory=socket.gethostname)

    def snapshot(self) -> dict[str, Any]:
        import time

        return {"now": time.time(), "nodes": self.nodes(), "rollouts": self.rollouts(), "models": self.models(),
                "aggregator": self.aggregator(), "target": self.target()}


def _params(request, allowed: tuple[str, ...]) -> dict[str, str]:
    q = request.scope.get("query_string", b"")
    if len(q) > MAX_QUERY:
        raise _Refused(414, f"query string of {len(q)} bytes; at most {MAX_QUERY}")
    out = {}
    for k, v in request.query_params.multi_items():
        if k not in allowed:
            raise _Refused(400, f"unknown query parameter {k[:40]!r}" + (f"; allowed: {', '.join(allowed)}"
                                                                          if allowed else "; none is taken"))
        out[k] = v
    return out


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _refresh(v: str | None, default: float) -> float:
    if v is None:
        return default
    try:
        r = float(v)
    except ValueError:
        r = -1.0
    if not 1 <= r <= 3600:
        raise _Refused(400, f"refresh must be a number of seconds from 1 to 3600, got {v[:40]!r}")
    return r


def fleetview_router(view: FarmView):
    router = APIRouter(tags=["fleet view"])

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=HEADERS)

    def refused(x: Exception) -> HTMLResponse:
        status = x.status if isinstance(x, _Refused) else getattr(x, "http_status", 500)
        return html(page.error_page(status, str(x)), status)

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui", status_code=303)

    @router.get("/ui", include_in_schema=False)
    async def ui(request: Request) -> Response:
        try:
            refresh = _refresh(_params(request, ("refresh",)).get("refresh"), view.refresh)
            snap = await run_in_threadpool(view.snapshot)
        except (_Refused, PifarmError) as x:
            return refused(x)
        return html(page.page(snap, refresh))

    @router.get("/ui/fragment", include_in_schema=False)
    async def fragment(request: Request) -> Response:
        try:
            _params(request, ())
            snap = await run_in_threadpool(view.snapshot)
        except (_Refused, PifarmError) as x:
            return refused(x)
        return html(page.fragment(snap))

    @router.get("/ui/nodes/{node}", include_in_schema=False)
    async def node(node: str, request: Request) -> Response:
        try:
            _params(request, ())
            if len(node) > 255:
                raise UsageError(f"a node id has at most 128 characters, got {len(node)}")
            n = await run_in_threadpool(view.node, node)
        except (_Refused, PifarmError) as x:
            return refused(x)
        return html(page.node_page(n))

    files = {name: (resources.files("pifarm.registry.fleetview") / "static" / name).read_bytes() for name in STATIC}

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            return html(page.error_page(404, f"no static file {name[:60]!r}"), 404)
        return Response(files[name], media_type=STATIC[name], headers={**HEADERS, "Cache-Control": "no-cache"})

    @router.get("/v1/fleet/prometheus-sd", summary="Prometheus http_sd targets: every node and the aggregator")
    async def prometheus_sd(request: Request) -> Response:
        try:
            role = sd.check_role(_params(request, ("role",)).get("role"))
        except _Refused as x:
            return JSONResponse({"error": str(x), "kind": "UsageError"}, status_code=x.status)
        except PifarmError as x:
            return JSONResponse({"error": str(x), "kind": type(x).__name__}, status_code=x.http_status)
        host = request.headers.get("host") or ""
        me = sd.target_of(f"{request.url.scheme}://{host}")
        if me is None and request.scope.get("server"):
            h, p = request.scope["server"][:2]
            me = sd.target_of(f"{request.url.scheme}://{f'[{h}]' if ':' in str(h) else h}:{p}")
        nodes = await run_in_threadpool(view.nodes)
        return JSONResponse(sd.targets(nodes, me, view.hostname, role), headers={"Cache-Control": "no-store"})

    return router

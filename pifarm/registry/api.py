"""The aggregator's HTTP API: metadata long-poll, models, manifests, blobs, writes, health, metrics.

`create_app` builds a FastAPI app around an opened `Registry`: one `ApiState` on `app.state.api`,
the routers of `pifarm.registry.routes` (one module per route group) and the error handlers.
Nothing happens at import and the lifespan owns the background work (store probes, snapshot
re-signing, change notification). Reads are open; writes need the bearer token (absent -> 401,
wrong -> 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from typing import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from pifarm.errors import PifarmError
from pifarm.registry.notify import RevisionNotifier
from pifarm.registry.routes import blobs, health, metadata, writes
from pifarm.registry.routes.blobs import parse_range
from pifarm.registry.routes.state import ApiState, HealthProvider, Metrics
from pifarm.registry.service import Registry
from pifarm.registry.settings import ApiSettings

log = logging.getLogger(__name__)


def create_app(registry: Registry, settings: ApiSettings, *, token: str | None = None,
               health_providers: Iterable[HealthProvider] = (),
               metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """The API app for one opened registry. `token` defaults to `settings.token`; with neither,
    every write is refused (403), never allowed."""
    metrics_reg = metrics_registry or CollectorRegistry()
    state = ApiState(registry=registry, settings=settings, write_token=token or settings.token,
                     metrics_registry=metrics_reg, metrics=Metrics(metrics_reg),
                     health_providers=list(health_providers))
    app = FastAPI(title="pifarm aggregator", version="1", lifespan=lambda app: _lifespan(app, state))
    app.state.api = state
    app.state.registry = registry
    app.state.metrics_registry = metrics_reg
    app.add_exception_handler(PifarmError, _pifarm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for group in (metadata, blobs, writes, health):
        app.include_router(group.router)
    app.add_exception_handler(OSError, _os_error)
    app.add_middleware(metadata.MetadataFastPath, state=state)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: sees the fast path's answers too
    return app


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestMetrics:
    """Counts every request by route template (never the raw path: labels stay bounded), method and
    status; a write answered >= 400 also counts as a write failure by reason (the error's class)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/v1/metadata" if scope.get("path") == "/v1/metadata" else "other")
            method = scope.get("method", "GET") if scope.get("method") in KNOWN_METHODS else "other"
            self.metrics.requests.labels(path, method, str(status[0])).inc()
            if method in WRITE_METHODS and status[0] >= 400:
                self.metrics.write_failures.labels(scope.get("pifarm_error") or str(status[0])).inc()


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, state: ApiState):
    notifier = RevisionNotifier(-1)
    state.notifier = notifier
    app.state.begin_shutdown = notifier.close
    # the waiters all answer with the bytes fetched here once per revision
    unsubscribe = state.registry.subscribe(lambda _rev: notifier.changed(*state.current()))
    notifier._set(*state.current())
    # a shared S3 bucket: follow what other aggregators commit (wakes the waiters through subscribe)
    getattr(state.registry, "start_following", lambda: None)()
    state.metrics.waiters.set_function(lambda: notifier.waiters)
    task = asyncio.create_task(_housekeeping(state.registry))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        unsubscribe()


async def _housekeeping(registry: Registry) -> None:
    interval = max(0.2, registry.store_check_interval)
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(registry.check_store)
            await run_in_threadpool(registry.refresh_if_due)
            await run_in_threadpool(registry.collect_if_due)  # unclaimed uploads past their grace
        except Exception:  # keep probing; a failure here must not end the loop
            log.exception("registry housekeeping failed")


async def _os_error(request: Request, e: OSError):
    """A local fault under a request (disk full, I/O error): one line to the client and the log."""
    request.scope["pifarm_error"] = "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "os_error"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (f"the aggregator's disk is full ({e.strerror}) while handling {request.method} {request.url.path}; "
               f"free space in its data dir, then retry")
        log.error("%s", msg)
        return JSONResponse({"error": msg, "kind": "ReadOnlyError"}, status_code=503)
    msg = f"the aggregator failed locally on {request.method} {request.url.path}: {e.strerror or e}"
    log.error("%s", msg)
    return JSONResponse({"error": msg, "kind": "PifarmError"}, status_code=500)


async def _pifarm_error(request: Request, e: PifarmError):
    request.scope["pifarm_error"] = type(e).__name__
    code = e.http_status
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse({"error": str(e), "kind": type(e).__name__}, status_code=code, headers=headers)


async def _validation_error(request: Request, e: RequestValidationError):
    errs = e.errors()
    first = errs[0] if errs else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}", "kind": "UsageError"},
                        status_code=422)


__all__ = ["ApiState", "create_app", "parse_range"]

"""Reads of the registry's state: the signed snapshot (long-poll), models, manifests."""

from __future__ import annotations

import random
import time

from fastapi import APIRouter, Query
from fastapi.responses import Response

from pifarm.registry.routes.state import ApiState, State

__all__ = ["MetadataFastPath", "long_poll", "router"]

router = APIRouter()


async def long_poll(state: ApiState, since: int | None, wait: float | None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a metadata request; the one implementation of its rules."""
    notifier = state.notifier
    settings, metrics = state.settings, state.metrics
    rev, data = notifier.payload
    if since is not None and since == rev:  # nothing new yet: park until a change or the timeout
        w = min(settings.wait_default if wait is None else wait, settings.wait_max)
        w += random.uniform(0, w / 16) if w else 0.0
        await notifier.wait_past(since, w)
        rev, data = notifier.payload
        if rev <= since and notifier.closing:
            # without this, uvicorn cancels parked requests at its shutdown timeout and the
            # nodes see a bare 500; they get a reason and a retry hint instead
            return 503, {"X-Pifarm-Revision": str(rev), "Retry-After": "1", "Content-Type": "application/json"}, \
                b'{"error": "aggregator is shutting down; retry shortly (nodes keep serving from cache)"}'
        if rev <= since:
            return 304, {"X-Pifarm-Revision": str(rev), "ETag": f'"r{rev}"'}, b""
        took = time.monotonic() - notifier.changed_at
        metrics.notify.observe(took)
        if state.fanout.get(rev, 0.0) < took:
            state.fanout.clear()
            state.fanout[rev] = took
            metrics.fanout.set(took)
    headers = {"X-Pifarm-Revision": str(rev), "ETag": f'"r{rev}"', "Cache-Control": "no-cache",
               "Content-Type": "application/json"}
    if since is not None and since > rev:
        headers["X-Pifarm-Reset"] = "1"
    return 200, headers, data


class MetadataFastPath:
    """Serve well-formed `GET /v1/metadata` requests below the framework.

    Thousands of parked long-polls wake together on a publish; skipping routing, dependency
    injection and the middleware stack for them is what keeps the fan-out cheap. Anything this
    parser does not accept falls through to the FastAPI route (same rules, its error messages).
    """

    def __init__(self, app, state: ApiState):
        self.app = app
        self.state = state

    @staticmethod
    def _params(query: bytes) -> tuple[int | None, float | None] | None:
        since = wait = None
        for part in query.split(b"&") if query else ():
            key, _, value = part.partition(b"=")
            try:
                if key == b"since" and since is None:
                    since = int(value)
                    if since < -1:
                        return None
                elif key == b"wait" and wait is None:
                    wait = float(value)
                    if not 0 <= wait < float("inf"):
                        return None
                else:
                    return None
            except ValueError:
                return None
        return since, wait

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/metadata" and scope["method"] == "GET":
            params = self._params(scope.get("query_string", b""))
            if params is not None:
                status, headers, body = await long_poll(self.state, *params)
                raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                raw.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@router.get("/v1/metadata", summary="Signed snapshot; long-polls until the revision exceeds `since`")
async def metadata(state: State, since: int | None = Query(None, ge=-1),
                   wait: float | None = Query(None, ge=0)) -> Response:
    status, headers, body = await long_poll(state, since, wait)
    return Response(body, status_code=status, headers=headers)


@router.get("/v1/models", summary="Every model with its channels and live versions")
async def models(state: State) -> dict:
    return {"revision": state.registry.revision, "models": state.registry.models()}


@router.get("/v1/models/{name}")
async def model(name: str, state: State) -> dict:
    return {"name": name, **state.registry.model(name)}


@router.get("/v1/models/{name}/versions/{version}", summary="The signed manifest document")
async def manifest(name: str, version: int, state: State) -> Response:
    data = state.registry.manifest_bytes(name, version)
    return Response(data, media_type="application/json")

"""Server metadata, liveness, readiness (three states), /health for HAProxy, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from pifarm.inference.routes.state import State

__all__ = ["router"]

router = APIRouter()


@router.get("/v2")
async def server_metadata(state: State) -> dict:
    return state.serving.server_metadata()


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", responses={503: {"description": "not ready (reason in the body)"}})
async def ready(state: State) -> JSONResponse:
    h = await asyncio.to_thread(state.serving.health)
    return JSONResponse(h.ready_json(), status_code=200 if h.ready else 503, headers=h.headers())


@router.get("/health", responses={503: {"description": "not every configured model is loaded"}})
async def health(state: State) -> JSONResponse:
    h = await asyncio.to_thread(state.serving.health)
    return JSONResponse({**h.body, "state": h.state, "reason": h.reason}, status_code=200 if h.ready else 503,
                        headers=h.headers())


@router.get("/metrics", response_class=Response)
async def prometheus(state: State) -> Response:
    await asyncio.to_thread(state.manager.health)  # refreshes the degraded gauge from the state file
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

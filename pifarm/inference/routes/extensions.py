"""The statistics and model repository extensions (Triton's shapes; stats.py, repository.py)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pifarm.inference.routes.state import State, error

__all__ = ["router"]

router = APIRouter()


@router.get("/v2/models/stats")
async def stats_all(state: State) -> dict:
    return state.serving.statistics(None, None)


@router.get("/v2/models/{model}/stats", responses={404: {"description": "unknown model"}})
async def stats_model(model: str, state: State) -> dict:
    return state.serving.statistics(model, None)


@router.get("/v2/models/{model}/versions/{version}/stats", responses={404: {"description": "unknown model"}})
async def stats_version(model: str, version: str, state: State) -> dict:
    return state.serving.statistics(model, version)


@router.post("/v2/repository/index")
async def repository_index(request: Request, state: State) -> JSONResponse:
    body = await request.body()
    try:
        ready_only = bool(json.loads(body).get("ready")) if body.strip() else False
    except (ValueError, AttributeError):
        return error(400, "repository index body must be a JSON object, e.g. {\"ready\": true}")
    return JSONResponse(await asyncio.to_thread(state.repository.index, ready_only))


WRITES = {401: {"description": "no token"}, 403: {"description": "wrong token"},
          404: {"description": "not in the cache"}}


@router.post("/v2/repository/models/{model}/load", responses=WRITES)
async def repository_load(model: str, request: Request, state: State) -> JSONResponse:
    state.repository.authorize(request.headers.get("authorization"))
    await asyncio.to_thread(state.repository.load, model)
    return JSONResponse({})


@router.post("/v2/repository/models/{model}/unload", responses=WRITES)
async def repository_unload(model: str, request: Request, state: State) -> JSONResponse:
    state.repository.authorize(request.headers.get("authorization"))
    await asyncio.to_thread(state.repository.unload, model)
    return JSONResponse({})

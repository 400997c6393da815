"""Model metadata (tensors, datatypes, shapes) and model readiness, per model or version."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pifarm.inference.routes.state import ServerState, State

__all__ = ["router"]

router = APIRouter()


def _ready(state: ServerState, model: str, version: str | None) -> JSONResponse:
    ok = state.serving.model_ready(model, version)
    return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{model}", responses={404: {"description": "unknown model"}})
async def model_metadata(model: str, state: State) -> dict:
    return state.serving.model_metadata(model, None)


@router.get("/v2/models/{model}/versions/{version}", responses={404: {"description": "unknown model or version"}})
async def model_version_metadata(model: str, version: str, state: State) -> dict:
    return state.serving.model_metadata(model, version)


@router.get("/v2/models/{model}/ready", responses={404: {"description": "unknown model"}, 503: {"description": "not loaded"}})
async def model_ready_route(model: str, state: State) -> JSONResponse:
    return _ready(state, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready",
            responses={404: {"description": "unknown model or version"}, 503: {"description": "not loaded"}})
async def model_version_ready(model: str, version: str, state: State) -> JSONResponse:
    return _ready(state, model, version)

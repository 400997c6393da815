"""The one state object every route of the inference server reads (held on `app.state.server`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from pifarm.inference.manager import ModelManager
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.repository import Repository
from pifarm.inference.serving import Serving
from pifarm.inference.settings import InferenceSettings

__all__ = ["ServerState", "State", "error", "server_state"]


@dataclass(frozen=True)
class ServerState:
    settings: InferenceSettings
    manager: ModelManager
    metrics: ServerMetrics
    #: the request path both protocols share (metadata, readiness, health, infer, statistics)
    serving: Serving
    repository: Repository


def server_state(request: Request) -> ServerState:
    return request.app.state.server


#: a route parameter `state: State` receives the app's ServerState (no request parameters added)
State = Annotated[ServerState, Depends(server_state)]


def error(status: int, message: str) -> JSONResponse:
    """Every error this server answers: `{"error": "<one line>"}`."""
    return JSONResponse({"error": message}, status_code=status)

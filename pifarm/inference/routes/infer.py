"""POST .../infer: JSON tensors, or a JSON header plus binary tensors (protocol.py).

Normally answered below the framework by fastpath.py (InferFastPath); a request that reaches
these routes takes the same path (`fastpath.infer`, through `Serving`) and gets the same answer.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pifarm.errors import PifarmError
from pifarm.inference.fastpath import infer
from pifarm.inference.protocol import HEADER_LENGTH
from pifarm.inference.routes.state import ServerState, State, error

__all__ = ["router"]

router = APIRouter()

ERRORS = {400: {"description": "bad input"}, 404: {"description": "unknown model or version"},
          413: {"description": "body over max_body"}, 503: {"description": "not loaded yet or queue full"}}

# The body is read raw (JSON, or JSON header + binary tensors), so its schema is declared here
# (create_app adds InferenceRequest to the document's components).
BODY_DOC = {"openapi_extra": {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}}


async def _infer(state: ServerState, model: str, version: str | None, request: Request) -> Response:
    t0 = time.perf_counter_ns()
    try:
        body, header_len = await infer(state.serving, model, version, await request.body(),
                                       request.headers.get(HEADER_LENGTH), t0)
    except PifarmError as e:
        return error(e.http_status, str(e))
    if header_len is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_len)})


@router.post("/v2/models/{model}/infer", responses=ERRORS, **BODY_DOC)
async def infer_route(model: str, request: Request, state: State) -> Response:
    return await _infer(state, model, None, request)


@router.post("/v2/models/{model}/versions/{version}/infer", responses=ERRORS, **BODY_DOC)
async def infer_version_route(model: str, version: str, request: Request, state: State) -> Response:
    return await _infer(state, model, version, request)

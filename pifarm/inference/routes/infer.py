"""POST .../infer: JSON tensors, or a JSON header plus binary tensors (protocol.py).

Normally answered below the framework by fastpath.py (InferFastPath); a request that reaches
these routes takes the same path through `Serving` and gets the same answer.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pifarm.errors import PifarmError
from pifarm.inference.protocol import HEADER_LENGTH, build_response, parse_request
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
    serving = state.serving
    t0 = time.perf_counter_ns()
    try:
        req = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
        call = serving.start(model, version, req.tensors, req.outputs, t0)
        await asyncio.wrap_future(call.job.future)
        outs = serving.outputs(call)
    except PifarmError as err:
        e = serving.refine(model, err)
        serving.failed(model, version, t0, e.http_status)
        return error(e.http_status, str(e))
    t_enc = time.perf_counter_ns()
    mv = call.mv
    body, header_len = build_response(mv.name, mv.version, req.id, [(o.name, a) for o, a in outs],
                                      req.binary_outputs)
    serving.finish(call, t_enc)
    if header_len is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_len)})


@router.post("/v2/models/{model}/infer", responses=ERRORS, **BODY_DOC)
async def infer_route(model: str, request: Request, state: State) -> Response:
    return await _infer(state, model, None, request)


@router.post("/v2/models/{model}/versions/{version}/infer", responses=ERRORS, **BODY_DOC)
async def infer_version_route(model: str, version: str, request: Request, state: State) -> Response:
    return await _infer(state, model, version, request)

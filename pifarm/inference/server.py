"""The KServe V2 (Open Inference Protocol) REST server over the verified model cache.

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    liveness / readiness
    GET  /v2/models/{m}[/versions/{v}]         model metadata (tensors, datatypes, shapes)
    GET  /v2/models/{m}[/versions/{v}]/ready   model readiness
    POST /v2/models/{m}[/versions/{v}]/infer   inference (JSON tensors, or binary: see protocol.py)
    GET  /health                               for HAProxy: 200 when every model is loaded, else 503
    GET  /metrics                              Prometheus

`create_app` builds an app with no global state; its lifespan starts the model manager (loader,
watchdog, rescan) and stops it. `serve` runs it under a real uvicorn. Errors are JSON
`{"error": "<one line>"}` with 400 (bad input), 404 (unknown model/version), 413 (body over
`max_body`) or 503 (not loaded yet / queue full).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from pifarm import __version__
from pifarm.errors import PifarmError
from pifarm.inference.codec import BadInput, fit_inputs
from pifarm.inference.manager import ModelManager, NotReady
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.pool import Retired
from pifarm.inference.protocol import HEADER_LENGTH, InferenceRequest, build_response, parse_request
from pifarm.inference.settings import InferenceSettings

PLATFORM = "tensorflow_lite"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, before any parsing."""

    def __init__(self, app: Callable, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, f"request body is {int(declared)} bytes; the limit is {self.limit} (max_body)")
        body, more = bytearray(), True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(send, f"request body exceeds the limit of {self.limit} bytes (max_body)")
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def create_app(settings: InferenceSettings, cache_root: Path, state_dir: Path | None) -> FastAPI:
    """A KServe V2 app serving the models of the cache at `cache_root` (see module docstring)."""
    metrics = ServerMetrics()
    manager = ModelManager(settings, Path(cache_root), Path(state_dir) if state_dir is not None else None, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(manager.start)
        try:
            yield
        finally:
            await asyncio.to_thread(manager.stop)

    app = FastAPI(title="pifarm inference (KServe V2)", version=__version__, lifespan=lifespan)
    app.state.manager = manager
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, limit=settings.max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        else:
            loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
            msg = f"invalid request: {loc or 'body'}: {first.get('msg', 'invalid')}"
        model = request.path_params.get("model")
        if model:
            metrics.errors.labels(model, "400").inc()
        return _error(400, msg)

    @app.exception_handler(PifarmError)
    async def pifarm_error(request: Request, exc: PifarmError) -> JSONResponse:
        return _error(exc.http_status, str(exc))

    # -- server ----------------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "pifarm", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {"description": "not every model is loaded"}})
    async def ready() -> JSONResponse:
        ok = (await asyncio.to_thread(manager.health))["ready"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/health", responses={503: {"description": "not every configured model is loaded"}})
    async def health() -> JSONResponse:
        body = await asyncio.to_thread(manager.health)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        await asyncio.to_thread(manager.health)  # refreshes the degraded gauge from the state file
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- models ----------------------------------------------------------------------------
    def metadata(model: str, version: str | None) -> dict:
        a = manager.get(model, version)
        mv = a.version
        return {"name": mv.name, "versions": [str(mv.version)], "platform": PLATFORM,
                "inputs": [i.to_json() for i in mv.inputs], "outputs": [o.to_json() for o in mv.outputs]}

    def model_ready(model: str, version: str | None) -> JSONResponse:
        try:
            manager.get(model, version)
        except NotReady:
            return JSONResponse({"name": model, "ready": False}, status_code=503)
        return JSONResponse({"name": model, "ready": True})

    async def infer(model: str, version: str | None, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            req = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
            for _ in range(3):  # a swap may retire the pool between get() and submit()
                active = manager.get(model, version)
                mv = active.version
                arrays, rows = fit_inputs(mv.inputs, req.tensors, mv.batch.batchable)
                if req.outputs:
                    names = {o.name for o in mv.outputs}
                    missing = [w for w in req.outputs if w not in names]
                    if missing:
                        raise BadInput(f"model has no output {missing[0]!r}; outputs: {', '.join(sorted(names))}")
                try:
                    fut = active.pool.submit(arrays, rows)
                except Retired:
                    continue
                outs = await asyncio.wrap_future(fut)
                break
            else:
                raise NotReady(f"model {model} is being swapped; retry")
        except PifarmError as e:
            status = e.http_status
            metrics.errors.labels(model, str(status)).inc()
            return _error(status, str(e))
        chosen = [(o.name, arr) for o, arr in zip(mv.outputs, outs) if req.outputs is None or o.name in req.outputs]
        body, header_len = build_response(mv.name, mv.version, req.id, chosen, req.binary_outputs)
        metrics.requests.labels(model, str(mv.version)).inc()
        metrics.latency.labels(model).observe(time.perf_counter() - t0)
        if header_len is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_len)})

    @app.get("/v2/models/{model}", responses={404: {"description": "unknown model"}})
    async def model_metadata(model: str) -> dict:
        return metadata(model, None)

    @app.get("/v2/models/{model}/versions/{version}", responses={404: {"description": "unknown model or version"}})
    async def model_version_metadata(model: str, version: str) -> dict:
        return metadata(model, version)

    @app.get("/v2/models/{model}/ready", responses={404: {"description": "unknown model"}, 503: {"description": "not loaded"}})
    async def model_ready_route(model: str) -> JSONResponse:
        return model_ready(model, None)

    @app.get("/v2/models/{model}/versions/{version}/ready",
             responses={404: {"description": "unknown model or version"}, 503: {"description": "not loaded"}})
    async def model_version_ready(model: str, version: str) -> JSONResponse:
        return model_ready(model, version)

    errors = {400: {"description": "bad input"}, 404: {"description": "unknown model or version"},
              413: {"description": "body over max_body"}, 503: {"description": "not loaded yet or queue full"}}

    # The body is read raw (JSON, or JSON header + binary tensors), so its schema is declared here.
    body_doc = {"openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}}

    @app.post("/v2/models/{model}/infer", responses=errors, **body_doc)
    async def infer_route(model: str, request: Request) -> Response:
        return await infer(model, None, request)

    @app.post("/v2/models/{model}/versions/{version}/infer", responses=errors, **body_doc)
    async def infer_version_route(model: str, version: str, request: Request) -> Response:
        return await infer(model, version, request)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["InferenceRequest"] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    return app


def serve(settings: InferenceSettings, cache_root: Path, state_dir: Path | None, host: str = "127.0.0.1",
          port: int = 8080, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Run the server under uvicorn (uvloop/httptools when installed) until SIGINT/SIGTERM.

    Startup problems (no cache directory, no runtime) raise one-line PifarmErrors before
    uvicorn starts. `on_ready(host, port)` is called once the socket is bound (useful with port 0).
    """
    import threading

    import uvicorn

    from pifarm.errors import ConfigError
    from pifarm.inference.runtime import resolve

    if not Path(cache_root).is_dir():
        raise ConfigError(f"cache directory {cache_root} does not exist; pass the node's cache")
    resolve(settings.runtime)
    app = create_app(settings, cache_root, state_dir)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    if on_ready is not None:
        def announce() -> None:
            deadline = time.monotonic() + 300
            while not server.started and not server.should_exit and time.monotonic() < deadline:
                time.sleep(0.01)
            if server.started:
                sock = server.servers[0].sockets[0].getsockname()
                on_ready(sock[0], sock[1])

        threading.Thread(target=announce, name="serve-announce", daemon=True).start()
    server.run()

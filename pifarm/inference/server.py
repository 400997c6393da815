"""The KServe V2 (Open Inference Protocol) REST server over the verified model cache.

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    liveness / readiness
    GET  /v2/models/{m}[/versions/{v}]         model metadata (tensors, datatypes, shapes)
    GET  /v2/models/{m}[/versions/{v}]/ready   model readiness
    POST /v2/models/{m}[/versions/{v}]/infer   inference (JSON tensors, or binary: see protocol.py)
    GET  /v2/models[/{m}[/versions/{v}]]/stats statistics extension (Triton's shape; stats.py)
    POST /v2/repository/index                  repository extension: the cache's models and states
    POST /v2/repository/models/{m}/load|unload ... writes need the token or mTLS (repository.py)
    GET  /health                               for HAProxy: 200 when every model is loaded, else 503
    GET  /metrics                              Prometheus

Readiness has three states (serving.Health): ready, degraded (serving from the cache while the
registry or storage is unreachable: still 200, with the state and reason in the JSON and the
X-Pifarm-Health / X-Pifarm-Health-Reason headers) and not ready (503 with the reason).

`create_app` builds an app with no global state; its lifespan starts the model manager (loader,
watchdog, rescan) and, given `grpc_listen`, the gRPC endpoint over the same request path
(grpc_server.py), and stops them. Infer requests are answered below the framework by
fastpath.py; the routes here document them and answer the same way. `serve` runs it under a real uvicorn. Errors are JSON
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
from pifarm.inference.fastpath import InferFastPath
from pifarm.inference.manager import ModelManager
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.protocol import HEADER_LENGTH, InferenceRequest, build_response, parse_request
from pifarm.inference.repository import Repository
from pifarm.inference.serving import Serving
from pifarm.inference.settings import InferenceSettings


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


def create_app(settings: InferenceSettings, cache_root: Path, state_dir: Path | None,
               grpc_listen: str | None = None) -> FastAPI:
    """A KServe V2 app serving the models of the cache at `cache_root` (see module docstring);
    with `grpc_listen` ("host:port", port 0 = any) also the gRPC endpoint (app.state.grpc_port)."""
    metrics = ServerMetrics()
    manager = ModelManager(settings, Path(cache_root), Path(state_dir) if state_dir is not None else None, metrics)
    serving = Serving(manager, metrics)
    repository = Repository(manager, settings.write_token(), mtls=bool(settings.tls_client_ca))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        grpc_endpoint = None
        if grpc_listen:
            from pifarm.inference.grpc_server import GrpcEndpoint, credentials

            creds = credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca) if settings.tls_cert else None
            grpc_endpoint = GrpcEndpoint(serving, repository, grpc_listen, settings.max_body, creds)
            app.state.grpc_port = grpc_endpoint.port
        await asyncio.to_thread(manager.start)
        if grpc_endpoint is not None:
            grpc_endpoint.start()
        try:
            yield
        finally:
            if grpc_endpoint is not None:
                await asyncio.to_thread(grpc_endpoint.stop)
            await asyncio.to_thread(manager.stop)

    app = FastAPI(title="pifarm inference (KServe V2)", version=__version__, lifespan=lifespan)
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.serving = serving
    app.state.repository = repository
    app.state.grpc_port = None
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(InferFastPath, serving=serving, max_body=settings.max_body)  # outermost: infer skips the rest

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
        return serving.server_metadata()

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {"description": "not ready (reason in the body)"}})
    async def ready() -> JSONResponse:
        h = await asyncio.to_thread(serving.health)
        return JSONResponse(h.ready_json(), status_code=200 if h.ready else 503, headers=h.headers())

    @app.get("/health", responses={503: {"description": "not every configured model is loaded"}})
    async def health() -> JSONResponse:
        h = await asyncio.to_thread(serving.health)
        return JSONResponse({**h.body, "state": h.state, "reason": h.reason}, status_code=200 if h.ready else 503,
                            headers=h.headers())

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        await asyncio.to_thread(manager.health)  # refreshes the degraded gauge from the state file
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- statistics and repository extensions -----------------------------------------------
    @app.get("/v2/models/stats")
    async def stats_all() -> dict:
        return serving.statistics(None, None)

    @app.get("/v2/models/{model}/stats", responses={404: {"description": "unknown model"}})
    async def stats_model(model: str) -> dict:
        return serving.statistics(model, None)

    @app.get("/v2/models/{model}/versions/{version}/stats", responses={404: {"description": "unknown model"}})
    async def stats_version(model: str, version: str) -> dict:
        return serving.statistics(model, version)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            ready_only = bool(json.loads(body).get("ready")) if body.strip() else False
        except (ValueError, AttributeError):
            return _error(400, "repository index body must be a JSON object, e.g. {\"ready\": true}")
        return JSONResponse(await asyncio.to_thread(repository.index, ready_only))

    writes = {401: {"description": "no token"}, 403: {"description": "wrong token"},
              404: {"description": "not in the cache"}}

    @app.post("/v2/repository/models/{model}/load", responses=writes)
    async def repository_load(model: str, request: Request) -> JSONResponse:
        repository.authorize(request.headers.get("authorization"))
        await asyncio.to_thread(repository.load, model)
        return JSONResponse({})

    @app.post("/v2/repository/models/{model}/unload", responses=writes)
    async def repository_unload(model: str, request: Request) -> JSONResponse:
        repository.authorize(request.headers.get("authorization"))
        await asyncio.to_thread(repository.unload, model)
        return JSONResponse({})

    # -- models ----------------------------------------------------------------------------
    def metadata(model: str, version: str | None) -> dict:
        return serving.model_metadata(model, version)

    def model_ready(model: str, version: str | None) -> JSONResponse:
        ok = serving.model_ready(model, version)
        return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)

    async def infer(model: str, version: str | None, request: Request) -> Response:
        # Normally answered by InferFastPath before routing; the same path when reached here.
        t0 = time.perf_counter_ns()
        try:
            req = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
            call = serving.start(model, version, req.tensors, req.outputs, t0)
            await asyncio.wrap_future(call.job.future)
            outs = serving.outputs(call)
        except PifarmError as e:
            serving.failed(model, version, t0, e.http_status)
            return _error(e.http_status, str(e))
        t_enc = time.perf_counter_ns()
        mv = call.mv
        body, header_len = build_response(mv.name, mv.version, req.id, [(o.name, a) for o, a in outs],
                                          req.binary_outputs)
        serving.finish(call, t_enc)
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
    app = create_app(settings, cache_root, state_dir, grpc_listen=settings.grpc_address(host))
    tls: dict = {}
    if settings.tls_cert:
        import ssl

        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
        if settings.tls_client_ca:  # mTLS: every client shows a certificate this CA signed
            tls.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", **tls)
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

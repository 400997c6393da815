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

`create_app` builds an app with no global state: one `ServerState` on `app.state.server` and the
routers of `pifarm.inference.routes` (one module per route group). Its lifespan starts the model
manager (loader, watchdog, rescan) and, given `grpc_listen`, the gRPC endpoint over the same
request path (grpc_server.py), and stops them. Infer requests are answered below the framework by
fastpath.py; the infer routes document them and answer the same way. `serve` runs it under a real
uvicorn. Errors are JSON
`{"error": "<one line>"}` with 400 (bad input), 404 (unknown model/version), 413 (body over
`max_body`) or 503 (not loaded yet / queue full).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from pifarm import __version__
from pifarm.errors import PifarmError
from pifarm.inference.fastpath import InferFastPath
from pifarm.inference.manager import ModelManager
from pifarm.inference.metrics import NODE_METRICS_FILE, ServerMetrics
from pifarm.inference.protocol import InferenceRequest
from pifarm.inference.repository import Repository
from pifarm.inference.routes import extensions, health, infer, models
from pifarm.inference.routes.state import ServerState, error
from pifarm.inference.serving import UNKNOWN_MODEL, Serving
from pifarm.inference.settings import InferenceSettings


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
               grpc_listen: str | None = None, grpc_required: bool = True, extra_metrics: Iterable[Any] = ()) -> FastAPI:
    """A KServe V2 app serving the models of the cache at `cache_root` (see module docstring);
    with `grpc_listen` ("host:port", port 0 = any) also the gRPC endpoint (app.state.grpc_port).
    A default (not `grpc_required`) address that cannot be bound is a warning, not a failure."""
    metrics = ServerMetrics()
    metrics.also.extend(extra_metrics)
    if state_dir is not None and not metrics.also:  # beside a `node run --no-serve`: its metrics file
        metrics.files = (Path(state_dir) / NODE_METRICS_FILE,)
    manager = ModelManager(settings, Path(cache_root), Path(state_dir) if state_dir is not None else None, metrics)
    serving = Serving(manager, metrics)
    state = ServerState(settings=settings, manager=manager, metrics=metrics, serving=serving,
                        repository=Repository(manager, settings.write_token(), mtls=bool(settings.tls_client_ca)))
    app = FastAPI(title="pifarm inference (KServe V2)", version=__version__,
                  lifespan=lambda app: _lifespan(app, state, grpc_listen, grpc_required))
    app.state.server = state
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.serving = serving
    app.state.repository = state.repository
    app.state.grpc_port = None
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(InferFastPath, serving=serving, max_body=settings.max_body)  # outermost: infer skips the rest
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(PifarmError, _pifarm_error)
    for group in (health, extensions, models, infer):  # in this order: /v2/models/stats before /v2/models/{model}
        app.include_router(group.router)
    app.openapi = lambda: _openapi(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, state: ServerState, grpc_listen: str | None, grpc_required: bool = True):
    settings, manager = state.settings, state.manager
    grpc_endpoint = None
    if grpc_listen:
        from pifarm.errors import ConfigError
        from pifarm.inference.grpc_server import GrpcEndpoint, credentials

        creds = credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca) if settings.tls_cert else None
        try:
            grpc_endpoint = GrpcEndpoint(state.serving, state.repository, grpc_listen, settings.max_body, creds)
            app.state.grpc_port = grpc_endpoint.port
        except ConfigError as e:
            if grpc_required:
                raise
            logging.getLogger(__name__).warning("%s; serving REST only (set [inference] grpc_listen)", e)
    await asyncio.to_thread(manager.start)
    if grpc_endpoint is not None:
        grpc_endpoint.start()
    try:
        yield
    finally:
        if grpc_endpoint is not None:
            await asyncio.to_thread(grpc_endpoint.stop)
        await asyncio.to_thread(manager.stop)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        msg = "request body is not valid JSON"
    else:
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"invalid request: {loc or 'body'}: {first.get('msg', 'invalid')}"
    model = request.path_params.get("model")
    if model:
        server = request.app.state.server
        known = await asyncio.to_thread(server.manager.known, model)
        server.metrics.errors.labels(model if known else UNKNOWN_MODEL, "400").inc()  # bounded labels
    return error(400, msg)


async def _pifarm_error(request: Request, exc: PifarmError) -> JSONResponse:
    return error(exc.http_status, str(exc))


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus InferenceRequest: the infer body is read raw, so no route declares it."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["InferenceRequest"] = schema
        app.openapi_schema = doc
    return app.openapi_schema


def serve(settings: InferenceSettings, cache_root: Path, state_dir: Path | None, host: str = "127.0.0.1",
          port: int = 8080, on_ready: Callable[[str, int], None] | None = None, extra_metrics: Iterable[Any] = (),
          sock: Any = None) -> None:
    """Run the server under uvicorn (uvloop/httptools when installed) until SIGINT/SIGTERM.

    Startup problems (no cache directory, no runtime) raise one-line PifarmErrors before
    uvicorn starts. `on_ready(host, port)` is called once the socket is bound (useful with port 0).
    `sock`, when given, is an already bound listening socket (`pifarm node run` binds before it pulls).
    """
    import threading

    import uvicorn

    from pifarm.asgiserver import QuietServer
    from pifarm.errors import ConfigError
    from pifarm.inference.runtime import resolve

    if not Path(cache_root).is_dir():
        raise ConfigError(f"cache directory {cache_root} does not exist; pass the node's cache")
    resolve(settings.runtime)
    grpc_listen, grpc_required = settings.grpc_address(host, port)
    app = create_app(settings, cache_root, state_dir, grpc_listen=grpc_listen, grpc_required=grpc_required,
                     extra_metrics=extra_metrics)
    tls: dict = {}
    if settings.tls_cert:
        import ssl

        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
        if settings.tls_client_ca:  # mTLS: every client shows a certificate this CA signed
            tls.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            limit_concurrency=settings.max_connections, **tls)
    server = QuietServer(config)  # no 10 Hz tick: an idle node's server sleeps (issue 19)
    if on_ready is not None:
        def announce() -> None:
            deadline = time.monotonic() + 300
            while not server.started and not server.should_exit and time.monotonic() < deadline:
                time.sleep(0.01)
            if server.started:
                sock = server.servers[0].sockets[0].getsockname()
                on_ready(sock[0], sock[1])

        threading.Thread(target=announce, name="serve-announce", daemon=True).start()
    server.run(sockets=[sock] if sock is not None else None)  # `sock`: bound by the caller before its work

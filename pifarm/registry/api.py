"""The aggregator's HTTP API: metadata long-poll, models, manifests, blobs, writes, health, metrics.

`create_app` builds a FastAPI app around an opened `Registry`; nothing happens at import and the
lifespan owns the background work (store probes, snapshot re-signing, change notification).
Reads are open; writes need the bearer token (absent -> 401, wrong -> 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import blake3
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pifarm.errors import Forbidden, PifarmError, TooLarge, Unauthorized, UsageError
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier, digest_hex, make_digest
from pifarm.signed.manifest import FileEntry
from pifarm.registry.notify import RevisionNotifier
from pifarm.registry.service import Registry
from pifarm.registry.settings import ApiSettings

log = logging.getLogger(__name__)

HealthProvider = Callable[[], dict]


class FileModel(BaseModel):
    path: str
    size: int = Field(ge=0)
    digest: str


class PublishRequest(BaseModel):
    files: list[FileModel]
    channel: str | None = None
    labels: dict[str, str] = {}
    format: str | None = None


class PromoteRequest(BaseModel):
    version: int


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.revision = Gauge("pifarm_registry_revision", "Current snapshot revision", registry=registry)
        self.read_only = Gauge("pifarm_registry_read_only", "1 while the registry refuses writes", registry=registry)
        self.waiters = Gauge("pifarm_metadata_waiters", "Long-poll requests waiting now", registry=registry)
        self.writes = Counter("pifarm_registry_writes", "Write requests by operation and outcome",
                              ["op", "outcome"], registry=registry)
        self.blob_bytes = Counter("pifarm_blob_bytes_served", "Blob bytes sent", registry=registry)
        self.notify = Histogram("pifarm_metadata_notify_seconds", "Revision change to a parked long-poll answered",
                                buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5), registry=registry)
        self.fanout = Gauge("pifarm_metadata_last_fanout_seconds",
                            "Revision change to the last parked long-poll answered, latest change", registry=registry)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range; None for the whole blob; UsageError if unsatisfiable."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multi-range or unknown unit: RFC 9110 lets us answer with the whole body
    a, b = m.group(1), m.group(2)
    if a:
        start = int(a)
        end = min(int(b) + 1, size) if b else size
        if b and int(b) < start:
            return None
    else:
        start, end = max(size - int(b), 0), size
    if start >= size or end <= start:
        raise UsageError(f"range {header!r} is outside the blob's {size} bytes")
    return start, end


def _iter_file(path: Path, start: int, end: int) -> Iterable[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


class MetadataFastPath:
    """Serve well-formed `GET /v1/metadata` requests below the framework.

    Thousands of parked long-polls wake together on a publish; skipping routing, dependency
    injection and the middleware stack for them is what keeps the fan-out cheap. Anything this
    parser does not accept falls through to the FastAPI route (same rules, its error messages).
    """

    def __init__(self, app, long_poll):
        self.app = app
        self.long_poll = long_poll

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
                status, headers, body = await self.long_poll(*params)
                raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                raw.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def create_app(registry: Registry, settings: ApiSettings, *, token: str | None = None,
               health_providers: Iterable[HealthProvider] = (),
               metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """The API app for one opened registry. `token` defaults to `settings.token`; with neither,
    every write is refused (403), never allowed."""
    providers = list(health_providers)
    metrics_reg = metrics_registry or CollectorRegistry()
    metrics = Metrics(metrics_reg)
    write_token = token or settings.token
    tmp_dir = registry.data_dir / "tmp"
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        notifier = RevisionNotifier(-1)
        state["notifier"] = notifier
        app.state.begin_shutdown = notifier.close
        # the waiters all answer with the bytes fetched here once per revision
        unsubscribe = registry.subscribe(lambda _rev: notifier.changed(*_current()))
        notifier._set(*_current())
        metrics.waiters.set_function(lambda: notifier.waiters)
        task = asyncio.create_task(_housekeeping())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            unsubscribe()

    async def _housekeeping() -> None:
        interval = max(0.2, registry.store_check_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await run_in_threadpool(registry.check_store)
                await run_in_threadpool(registry.refresh_if_due)
            except Exception:  # keep probing; a failure here must not end the loop
                log.exception("registry housekeeping failed")

    app = FastAPI(title="pifarm aggregator", version="1", lifespan=lifespan)
    app.state.registry = registry
    app.state.metrics_registry = metrics_reg

    @app.exception_handler(PifarmError)
    async def _pifarm_error(request: Request, e: PifarmError):
        code = e.http_status
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse({"error": str(e), "kind": type(e).__name__}, status_code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}", "kind": "UsageError"},
                            status_code=422)

    def _current() -> tuple[int, tuple[int, bytes]]:
        rev, data = registry.snapshot_bytes()
        return rev, (rev, data)

    def require_token(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("this request needs 'Authorization: Bearer <token>' (see the aggregator's api-token)")
        if not write_token or not secrets.compare_digest(value.strip().encode(), write_token.encode()):
            raise Forbidden("the bearer token is not valid for writes on this registry")

    fanout: dict[int, float] = {}  # revision -> slowest wake-up so far

    async def long_poll(since: int | None, wait: float | None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a metadata request; the one implementation of its rules."""
        notifier: RevisionNotifier = state["notifier"]
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
            if fanout.get(rev, 0.0) < took:
                fanout.clear()
                fanout[rev] = took
                metrics.fanout.set(took)
        headers = {"X-Pifarm-Revision": str(rev), "ETag": f'"r{rev}"', "Cache-Control": "no-cache",
                   "Content-Type": "application/json"}
        if since is not None and since > rev:
            headers["X-Pifarm-Reset"] = "1"
        return 200, headers, data

    @app.get("/v1/metadata", summary="Signed snapshot; long-polls until the revision exceeds `since`")
    async def metadata(since: int | None = Query(None, ge=-1),
                       wait: float | None = Query(None, ge=0)) -> Response:
        status, headers, body = await long_poll(since, wait)
        return Response(body, status_code=status, headers=headers)

    app.add_middleware(MetadataFastPath, long_poll=long_poll)

    @app.get("/v1/models", summary="Every model with its channels and live versions")
    async def models() -> dict:
        return {"revision": registry.revision, "models": registry.models()}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        return {"name": name, **registry.model(name)}

    @app.get("/v1/models/{name}/versions/{version}", summary="The signed manifest document")
    async def manifest(name: str, version: int) -> Response:
        data = registry.manifest_bytes(name, version)
        return Response(data, media_type="application/json")

    @app.get("/v1/blobs/{digest}", operation_id="get_blob", summary="Blob bytes; Range gives 206")
    @app.head("/v1/blobs/{digest}", operation_id="head_blob", summary="Blob size and ETag")
    async def blob(digest: str, request: Request) -> Response:
        digest_hex(digest)
        size = await run_in_threadpool(registry.blob_size, digest)
        etag = f'"{digest}"'
        base = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        try:
            rng = parse_range(request.headers.get("range"), size)
        except UsageError:
            return Response(status_code=416, headers={**base, "Content-Range": f"bytes */{size}"})
        if rng and request.headers.get("if-range") not in (None, etag):
            rng = None
        start, end = rng or (0, size)
        headers = {**base, "Content-Length": str(end - start)}
        status = 200
        if rng:
            status, headers["Content-Range"] = 206, f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        src = await run_in_threadpool(registry.blob_path_or_stream, digest, start, end)
        body = _iter_file(src, start, end) if isinstance(src, Path) else src

        def counted():
            for chunk in body:
                metrics.blob_bytes.inc(len(chunk))
                yield chunk

        return StreamingResponse(counted(), status_code=status, headers=headers)

    async def receive_to_file(request: Request, verifier: StreamVerifier | None) -> tuple[Path, str, int]:
        """Stream the body into data_dir/tmp, enforcing the size limit; (path, digest, size)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload:
            raise TooLarge(f"upload of {declared} bytes exceeds the limit of {settings.max_upload} bytes ([api] max_upload)")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        path = tmp_dir / f"upload.{uuid.uuid4().hex}.part"
        h = blake3.blake3()
        n = 0
        try:
            with open(path, "xb") as f:
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > settings.max_upload:
                        raise TooLarge(f"upload exceeds the limit of {settings.max_upload} bytes ([api] max_upload)")
                    if verifier:
                        verifier.update(chunk)
                    h.update(chunk)
                    f.write(chunk)
            if verifier:
                verifier.finish()
            return path, make_digest(h.hexdigest()), n
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    @app.put("/v1/blobs/{digest}", status_code=201, dependencies=[Depends(require_token)],
             summary="Upload one blob (streamed, verified against its digest and size)")
    async def put_blob(digest: str, request: Request, size: int = Query(..., ge=0)) -> dict:
        ref = BlobRef(digest, size)
        if size > settings.max_upload:
            raise TooLarge(f"blob of {size} bytes exceeds the limit of {settings.max_upload} bytes ([api] max_upload)")
        path, _, _ = await receive_to_file(request, StreamVerifier(ref, source="upload"))
        try:
            await run_in_threadpool(registry.stage_blob, ref, path)
        finally:
            path.unlink(missing_ok=True)
        return {"digest": digest, "size": size}

    def _published(result, op: str) -> JSONResponse:
        manifest, doc = result
        metrics.writes.labels(op, "ok").inc()
        return JSONResponse({"name": manifest.name, "version": manifest.version, "manifest_digest": manifest.digest,
                             "revision": registry.revision, "document": doc}, status_code=201)

    @app.post("/v1/models/{name}/versions", dependencies=[Depends(require_token)],
              summary="Publish a version from uploaded blobs")
    async def publish(name: str, req: PublishRequest) -> JSONResponse:
        try:
            files = [FileEntry(f.path, f.size, f.digest) for f in req.files]
        except (ValueError, TypeError) as e:
            raise UsageError(f"bad file list: {e}") from e
        result = await run_in_threadpool(registry.publish_staged, name, files, req.channel, req.labels,
                                         format=req.format)
        return _published(result, "publish")

    @app.post("/v1/models/{name}/upload", dependencies=[Depends(require_token)],
              summary="Publish one file in one streamed request (body = the file)")
    async def publish_upload(name: str, request: Request, path: str = Query("model.tflite"),
                             channel: str | None = None, format: str | None = None) -> JSONResponse:
        tmp, digest, size = await receive_to_file(request, None)
        try:
            ref = BlobRef(digest, size)
            await run_in_threadpool(registry.stage_blob, ref, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            entry = FileEntry(path, size, digest)
        except (ValueError, TypeError) as e:
            raise UsageError(f"bad path {path!r}: {e}") from e
        result = await run_in_threadpool(registry.publish_staged, name, [entry], channel, None, format=format)
        return _published(result, "publish")

    @app.post("/v1/models/{name}/channels/{channel}", dependencies=[Depends(require_token)])
    async def promote(name: str, channel: str, req: PromoteRequest) -> dict:
        rev = await run_in_threadpool(registry.promote, name, req.version, channel)
        metrics.writes.labels("promote", "ok").inc()
        return {"name": name, "channel": channel, "version": req.version, "revision": rev}

    @app.post("/v1/models/{name}/channels/{channel}/rollback", dependencies=[Depends(require_token)])
    async def rollback(name: str, channel: str) -> dict:
        version = await run_in_threadpool(registry.rollback, name, channel)
        metrics.writes.labels("rollback", "ok").inc()
        return {"name": name, "channel": channel, "version": version, "revision": registry.revision}

    @app.post("/v1/models/{name}/versions/{version}/retire", dependencies=[Depends(require_token)])
    async def retire(name: str, version: int) -> dict:
        rev = await run_in_threadpool(registry.retire, name, version)
        metrics.writes.labels("retire", "ok").inc()
        return {"name": name, "version": version, "retired": True, "revision": rev}

    @app.get("/health")
    async def health() -> dict:
        body: dict[str, Any] = {
            "status": "degraded" if registry.read_only_reason else "ok",
            "revision": registry.revision,
            "read_only": registry.read_only_reason is not None,
            "read_only_reason": registry.read_only_reason,
            "store": {"location": registry.store.location, "reachable": registry.read_only_reason is None},
            "signing_keyid": registry.key.keyid,
        }
        for p in providers:
            try:
                body.update(p())
            except Exception as e:  # a broken provider reports itself instead of failing health
                body.setdefault("errors", []).append(f"{getattr(p, '__name__', p)}: {e}")
        return body

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.revision.set(registry.revision)
        metrics.read_only.set(1 if registry.read_only_reason else 0)
        return Response(generate_latest(metrics_reg), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["create_app", "parse_range"]

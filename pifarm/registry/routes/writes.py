"""Writes (bearer token): publish a version (two-step or one streamed request), move channels, retire."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pifarm.errors import UsageError
from pifarm.registry.routes.blobs import receive_to_file
from pifarm.registry.routes.state import ApiState, State, require_token
from pifarm.signed.integrity import BlobRef
from pifarm.signed.manifest import FileEntry

__all__ = ["FileModel", "PromoteRequest", "PublishRequest", "router"]

router = APIRouter(dependencies=[Depends(require_token)])


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


def _published(state: ApiState, result, op: str) -> JSONResponse:
    manifest, doc = result
    state.metrics.writes.labels(op, "ok").inc()
    return JSONResponse({"name": manifest.name, "version": manifest.version, "manifest_digest": manifest.digest,
                         "revision": state.registry.revision, "document": doc}, status_code=201)


@router.post("/v1/models/{name}/versions", summary="Publish a version from uploaded blobs")
async def publish(name: str, req: PublishRequest, state: State) -> JSONResponse:
    try:
        files = [FileEntry(f.path, f.size, f.digest) for f in req.files]
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad file list: {e}") from e
    result = await run_in_threadpool(state.registry.publish_staged, name, files, req.channel, req.labels,
                                     format=req.format)
    return _published(state, result, "publish")


@router.post("/v1/models/{name}/upload", summary="Publish one file in one streamed request (body = the file)")
async def publish_upload(name: str, request: Request, state: State, path: str = Query("model.tflite"),
                         channel: str | None = None, format: str | None = None) -> JSONResponse:
    tmp, digest, size = await receive_to_file(state, request, None)
    try:
        ref = BlobRef(digest, size)
        await run_in_threadpool(state.registry.stage_blob, ref, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        entry = FileEntry(path, size, digest)
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad path {path!r}: {e}") from e
    result = await run_in_threadpool(state.registry.publish_staged, name, [entry], channel, None, format=format)
    return _published(state, result, "publish")


@router.post("/v1/models/{name}/channels/{channel}")
async def promote(name: str, channel: str, req: PromoteRequest, state: State) -> dict:
    rev = await run_in_threadpool(state.registry.promote, name, req.version, channel)
    state.metrics.writes.labels("promote", "ok").inc()
    return {"name": name, "channel": channel, "version": req.version, "revision": rev}


@router.post("/v1/models/{name}/channels/{channel}/rollback")
async def rollback(name: str, channel: str, state: State) -> dict:
    version = await run_in_threadpool(state.registry.rollback, name, channel)
    state.metrics.writes.labels("rollback", "ok").inc()
    return {"name": name, "channel": channel, "version": version, "revision": state.registry.revision}


@router.post("/v1/models/{name}/versions/{version}/retire")
async def retire(name: str, version: int, state: State) -> dict:
    rev = await run_in_threadpool(state.registry.retire, name, version)
    state.metrics.writes.labels("retire", "ok").inc()
    return {"name": name, "version": version, "retired": True, "revision": rev}

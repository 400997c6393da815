"""Blob bytes: GET/HEAD with a single Range, and the streamed, verified PUT of one blob."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Iterable

import blake3
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pifarm.errors import TooLarge, UsageError
from pifarm.registry.routes.state import ApiState, State, require_token
from pifarm.registry.store_fs import read_range
from pifarm.signed.integrity import BlobRef, StreamVerifier, digest_hex, make_digest

__all__ = ["parse_range", "receive_to_file", "router"]

router = APIRouter()

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)\Z")
_BEYOND = 1 << 63  # any position of more than 18 digits: past every blob (int() of 5000 digits raises)


def _pos(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _BEYOND


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range; None for the whole blob; UsageError if unsatisfiable."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multi-range or unknown unit: RFC 9110 lets us answer with the whole body
    a, b = m.group(1), m.group(2)
    if a:
        start = _pos(a)
        end = min(_pos(b) + 1, size) if b else size
        if b and _pos(b) < start:
            return None
    else:
        start, end = max(size - _pos(b), 0), size
    if start >= size or end <= start:
        raise UsageError(f"range {header!r} is outside the blob's {size} bytes")
    return start, end


def _iter_file(path: Path, start: int, end: int) -> Iterable[bytes]:
    with open(path, "rb") as f:
        yield from read_range(f, start, end)


async def receive_to_file(state: ApiState, request: Request, verifier: StreamVerifier | None) -> tuple[Path, str, int]:
    """Stream the body into data_dir/tmp, enforcing the size limit; (path, digest, size)."""
    limit = state.settings.max_upload
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes ([api] max_upload)")
    state.tmp_dir.mkdir(parents=True, exist_ok=True)
    path = state.tmp_dir / f"upload.{uuid.uuid4().hex}.part"
    h = blake3.blake3()
    n = 0
    try:
        with open(path, "xb") as f:
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise TooLarge(f"upload exceeds the limit of {limit} bytes ([api] max_upload)")
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


@router.get("/v1/blobs/{digest}", operation_id="get_blob", summary="Blob bytes; Range gives 206")
@router.head("/v1/blobs/{digest}", operation_id="head_blob", summary="Blob size and ETag")
async def blob(digest: str, request: Request, state: State) -> Response:
    registry = state.registry
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
    served = state.metrics.blob_bytes

    def counted():
        for chunk in body:
            served.inc(len(chunk))
            yield chunk

    return StreamingResponse(counted(), status_code=status, headers=headers)


@router.put("/v1/blobs/{digest}", status_code=201, dependencies=[Depends(require_token)],
            summary="Upload one blob (streamed, verified against its digest and size)")
async def put_blob(digest: str, request: Request, state: State, size: int = Query(..., ge=0)) -> dict:
    ref = BlobRef(digest, size)
    limit = state.settings.max_upload
    if size > limit:
        raise TooLarge(f"blob of {size} bytes exceeds the limit of {limit} bytes ([api] max_upload)")
    path, _, _ = await receive_to_file(state, request, StreamVerifier(ref, source="upload"))
    try:
        await run_in_threadpool(state.registry.stage_blob, ref, path)
    finally:
        path.unlink(missing_ok=True)
    return {"digest": digest, "size": size}

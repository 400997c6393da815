"""The REST infer request below the framework: an ASGI layer that answers
`POST /v2/models/{m}[/versions/{v}]/infer` itself and hands every other request to the app.

A request costs a model like face_landmark ~1.5 ms to run; FastAPI's routing, dependency and
response machinery would add a good part of that again. This layer reads the body (refusing more
than `max_body` with 413), parses it with the same `protocol.parse_request` (JSON or the binary
tensor extension), runs it through the one request path (`serving.Serving`, shared with gRPC)
and writes the response bytes directly. The framework's infer routes remain for the OpenAPI
document and answer the same way.
"""

from __future__ import annotations

import asyncio
import json
import re
from time import perf_counter_ns
from typing import Callable

from pifarm.errors import PifarmError
from pifarm.inference.protocol import HEADER_LENGTH, build_response, parse_request
from pifarm.inference.serving import Serving

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer\Z")
_HEADER = HEADER_LENGTH.encode()
_JSON = [(b"content-type", b"application/json")]
_BINARY = (b"content-type", b"application/octet-stream")


def _error(status: int, message: str) -> tuple[int, list, bytes]:
    return status, list(_JSON), json.dumps({"error": message}).encode()


async def infer(serving: Serving, model: str, version: str | None, body: bytes, header_len: str | None,
                t0: int) -> tuple[bytes, int | None]:
    """One REST infer request, as this layer and the framework's routes both answer it: the
    response bytes and, for a binary response, its JSON header's length. A PifarmError is raised
    as the client should see it (refine), already counted as failed."""
    try:
        req = parse_request(body, header_len)
        call = serving.start(model, version, req.tensors, req.outputs, t0)
        await asyncio.wrap_future(call.job.future)
        outs = serving.outputs(call)
    except PifarmError as err:
        e = serving.refine(model, err)
        serving.failed(model, version, t0, e.http_status)
        raise e
    t_enc = perf_counter_ns()
    mv = call.mv
    payload, json_len = build_response(mv.name, mv.version, req.id, [(o.name, a) for o, a in outs],
                                       req.binary_outputs)
    serving.finish(call, t_enc)
    return payload, json_len


class InferFastPath:
    def __init__(self, app: Callable, serving: Serving, max_body: int):
        self.app = app
        self.serving = serving
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        m = _INFER.match(scope["path"])
        if m is None:
            return await self.app(scope, receive, send)
        t0 = perf_counter_ns()
        model, version = m.group(1), m.group(2)
        header_len = None
        declared = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                declared = v
            elif k == _HEADER:
                header_len = v.decode("latin-1")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await self._send(send, *_error(413, f"request body is {int(declared)} bytes; the limit is "
                                                       f"{self.max_body} (max_body)"), close=True)
        msg = await receive()
        body = msg.get("body", b"")
        if msg.get("more_body"):
            parts, size = [body], len(body)
            while msg.get("more_body"):
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                parts.append(chunk)
                size += len(chunk)
                if size > self.max_body:
                    return await self._send(send, *_error(413, f"request body exceeds the limit of {self.max_body} "
                                                               f"bytes (max_body)"), close=True)
            body = b"".join(parts)  # one copy, however many chunks
        elif msg["type"] == "http.disconnect":
            return
        if len(body) > self.max_body:
            return await self._send(send, *_error(413, f"request body exceeds the limit of {self.max_body} "
                                                       f"bytes (max_body)"), close=True)
        try:
            payload, json_len = await infer(self.serving, model, version, body, header_len, t0)
        except PifarmError as e:
            return await self._send(send, *_error(e.http_status, str(e)))
        if json_len is None:
            headers = list(_JSON)
        else:
            headers = [_BINARY, (_HEADER, str(json_len).encode())]
        await self._send(send, 200, headers, payload)

    @staticmethod
    async def _send(send, status: int, headers: list, payload: bytes, close: bool = False) -> None:
        headers.append((b"content-length", str(len(payload)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

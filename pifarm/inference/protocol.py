"""KServe V2 inference request/response documents, including the binary tensor data extension.

JSON tensors cost more to parse than a small model costs to run, so, like Triton, the server
also takes and returns raw tensor bytes: the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by each binary tensor in order, and a tensor
whose `parameters.binary_data_size` is set carries no `data`. Outputs come back binary when the
request asks (`parameters.binary_data_output`, or per output `parameters.binary_data`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pifarm.inference.codec import BadInput, datatype_of

HEADER_LENGTH = "inference-header-content-length"
NonNegInt = Annotated[int, Field(strict=True, ge=0)]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[NonNegInt]
    datatype: str = Field(description="BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32 (and the other V2 types)")
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; omitted for binary tensors")
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    tensors: list[tuple[str, str, list[int], Any]]   # (name, datatype, shape, list data | bytes)
    outputs: list[str] | None                        # requested output names, None = all
    binary_outputs: set[str] | bool                  # True = every output binary


def _one_line_validation(e: ValidationError) -> str:
    first = e.errors()[0] if e.errors() else {}
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    loc = ".".join(str(x) for x in first.get("loc", ()))
    return f"invalid request: {loc or 'body'}: {first.get('msg', 'invalid')}"


def parse_request(body: bytes, header_length: str | None) -> ParsedRequest:
    """Parse a JSON or binary-extension infer request; BadInput (400) on anything malformed."""
    binary = b""
    if header_length is not None:
        # ASCII digits only: str.isdigit() takes "²", which int() then refuses (a 500)
        if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 19) \
                or int(header_length) > len(body):
            raise BadInput(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
        n = int(header_length)
        view = memoryview(body)  # the tensors stay where they are: numpy reads them in place
        body, binary = bytes(view[:n]), view[n:]
    try:
        req = InferenceRequest.model_validate_json(body)
    except ValidationError as e:
        raise BadInput(_one_line_validation(e)) from e
    tensors: list[tuple[str, str, list[int], Any]] = []
    offset = 0
    for t in req.inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if t.data is not None:
                raise BadInput(f"input {t.name}: give either data or binary_data_size, not both")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise BadInput(f"input {t.name}: binary_data_size {size!r} runs past the end of the binary data")
            tensors.append((t.name, t.datatype, list(t.shape), memoryview(binary)[offset : offset + size]))
            offset += size
        else:
            if t.data is None:
                raise BadInput(f"input {t.name}: no data and no binary_data_size")
            tensors.append((t.name, t.datatype, list(t.shape), t.data))
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    wanted = [o.name for o in req.outputs] if req.outputs else None
    if bool((req.parameters or {}).get("binary_data_output")):
        bin_out: set[str] | bool = True
    else:
        bin_out = {o.name for o in (req.outputs or []) if (o.parameters or {}).get("binary_data")}
    return ParsedRequest(req.id, tensors, wanted, bin_out)


def build_response(model: str, version: int, req_id: str | None, outputs: list[tuple[str, np.ndarray]],
                   binary: set[str] | bool) -> tuple[bytes, int | None]:
    """(body, JSON header length or None for a plain JSON response)."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs:
        t: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if binary is True or (binary and name in binary):
            raw = np.ascontiguousarray(arr).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if req_id is not None:
        doc["id"] = req_id
    # Model outputs may be NaN or ±inf; Python's JSON tokens keep them instead of failing.
    header = json.dumps(doc, allow_nan=True, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)

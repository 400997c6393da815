"""KServe V2 (Open Inference Protocol) JSON tensors <-> numpy arrays, with one-line errors.

A request tensor is {"name", "shape", "datatype", "data"}; `data` is flat (row-major) or nested
to match `shape`. Every check a client can fail is here, as a BadInput with the tensor's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pifarm.errors import UsageError

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


class BadInput(UsageError):
    """The request is well-formed JSON but does not fit the model (HTTP 400)."""


def datatype_of(dtype: Any) -> str:
    dt = np.dtype(dtype)
    if dt not in _BY_DTYPE:
        raise BadInput(f"tensor type {dt} has no KServe V2 datatype")
    return _BY_DTYPE[dt]


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the server advertises it (batch dim -1 when resizable)."""

    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return datatype_of(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


_KINDS = {"b": "BOOL", "i": "integer", "u": "integer", "f": "numeric"}


def _kind_ok(datatype: str, kind: str) -> bool:
    if datatype == "BOOL":
        return kind == "b"
    if datatype.startswith(("INT", "UINT")):
        return kind in "iu"
    return kind in "iuf"


def decode(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """A request tensor as a numpy array of its declared datatype and shape (`data` is a JSON
    list, or raw little-endian bytes from the binary data extension).

    numpy parses the (flat or nested) list in C; the kind it infers tells JSON booleans,
    integers and floats apart, so each datatype accepts exactly the JSON values that fit it.
    """
    if datatype not in DATATYPES:
        raise BadInput(f"input {name}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise BadInput(f"input {name}: shape must be a list of non-negative integers, got {list(shape)}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        want_bytes = math.prod(shape) * DATATYPES[datatype].itemsize
        if len(data) != want_bytes:
            raise BadInput(f"input {name}: shape {list(shape)} of {datatype} needs {want_bytes} bytes, "
                           f"binary data has {len(data)}")
        return np.frombuffer(data, dtype=DATATYPES[datatype]).reshape(tuple(shape))
    if not isinstance(data, list):
        raise BadInput(f"input {name}: data must be a JSON array")
    want = math.prod(shape)
    try:
        raw = np.asarray(data)
    except (ValueError, OverflowError, TypeError) as e:
        raise BadInput(f"input {name}: data is ragged or not numeric: {' '.join(str(e).split())[:160]}") from e
    if raw.size != want:
        raise BadInput(f"input {name}: shape {list(shape)} needs {want} elements, data has {raw.size}")
    if raw.size and not _kind_ok(datatype, raw.dtype.kind):
        wanted = "true/false" if datatype == "BOOL" else ("integer" if datatype.startswith(("INT", "UINT")) else "numeric")
        raise BadInput(f"input {name}: datatype {datatype} needs {wanted} values")
    target = DATATYPES[datatype]
    if raw.size and raw.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < info.min or hi > info.max:
            raise BadInput(f"input {name}: a value is outside the {datatype} range [{info.min}, {info.max}]")
    if raw.size and target.kind == "f" and target.itemsize < 8 and raw.dtype.kind == "f":
        finfo = np.finfo(target)
        if np.isfinite(raw).all() and np.abs(raw).max() > finfo.max:
            raise BadInput(f"input {name}: a value is outside the {datatype} range")
    return raw.astype(target, copy=False).reshape(tuple(shape))


def encode(name: str, array: np.ndarray) -> dict[str, Any]:
    """A response tensor: flat row-major data, as KServe clients expect."""
    return {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape),
            "data": array.reshape(-1).tolist()}


def fit_inputs(infos: Sequence[TensorInfo], tensors: Sequence[tuple[str, str, list[int], Any]],
               batchable: bool) -> tuple[list[np.ndarray], int | None]:
    """Match request tensors to model inputs by name; (arrays in model order, batch rows or None).

    A batchable model takes any leading dimension n >= 1 (the same n on every input); otherwise
    the shape must equal the model's exactly.
    """
    by_name: dict[str, tuple[str, list[int], Any]] = {}
    for name, datatype, shape, data in tensors:
        if name in by_name:
            raise BadInput(f"input {name} is given twice")
        by_name[name] = (datatype, shape, data)
    known = {i.name for i in infos}
    extra = sorted(set(by_name) - known)
    if extra:
        raise BadInput(f"model has no input {extra[0]!r}; inputs: {', '.join(sorted(known))}")
    arrays = []
    rows: int | None = None
    for info in infos:
        if info.name not in by_name:
            raise BadInput(f"input {info.name} is missing from the request")
        datatype, shape, data = by_name[info.name]
        if datatype != info.datatype:
            raise BadInput(f"input {info.name}: datatype {datatype} given, model wants {info.datatype}")
        shape = list(shape)
        if batchable:
            ok = len(shape) == len(info.shape) and len(shape) >= 1 and shape[0] >= 1 and tuple(shape[1:]) == info.shape[1:]
            if ok:
                if rows is not None and shape[0] != rows:
                    raise BadInput(f"input {info.name}: batch size {shape[0]} differs from other inputs ({rows})")
                rows = shape[0]
        else:
            ok = tuple(shape) == info.shape
        if not ok:
            raise BadInput(f"input {info.name}: shape {shape} given, model wants {list(info.shape)}")
        arrays.append(decode(info.name, datatype, shape, data))
    return arrays, rows

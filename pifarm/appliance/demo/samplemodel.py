"""Tiny, valid TFLite models written with the `flatbuffers` + `tflite` schema packages.

The demo, the tests and the benchmarks need models that are small, deterministic (same seed,
same bytes) and whose answer is known without a runtime. Each one computes y = x*W + b:

    linear_model     FULLY_CONNECTED, input [N, in] with a resizable batch dim (-1), y = x·Wᵀ + b
    nobatch_model    MUL + ADD on a rank-1 input [n], no batch dimension to resize
    add_model        ADD x + b on a rank-1 input in FLOAT32 / INT32 / INT64 (datatype paths)
    large_model      linear_model sized to ~5 MB of weights (the P4 benchmark's model)

`expected(...)` recomputes the output with numpy so callers can check a runtime's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
import tflite as T

from pifarm.errors import UsageError

_TYPES = {
    np.dtype(np.float32): T.TensorType.FLOAT32,
    np.dtype(np.int32): T.TensorType.INT32,
    np.dtype(np.int64): T.TensorType.INT64,
}
SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...]
    dtype: np.dtype
    data: bytes | None = None  # constant tensors carry their bytes in a model buffer


@dataclass(frozen=True)
class _Op:
    builtin: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _int_vector(b: flatbuffers.Builder, start, values) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _byte_vector(b: flatbuffers.Builder, data: bytes) -> int:
    # 16-byte alignment so the runtime can use the weights in place (mmap / zero-copy).
    b.StartVector(1, len(data), 16)
    b.head = b.head - len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return b.EndVector()


def _options(b: flatbuffers.Builder, builtin: int) -> tuple[int, int]:
    ops = T.BuiltinOperator
    if builtin == ops.FULLY_CONNECTED:
        T.FullyConnectedOptionsStart(b)
        return T.BuiltinOptions.FullyConnectedOptions, T.FullyConnectedOptionsEnd(b)
    if builtin == ops.ADD:
        T.AddOptionsStart(b)
        return T.BuiltinOptions.AddOptions, T.AddOptionsEnd(b)
    if builtin == ops.MUL:
        T.MulOptionsStart(b)
        return T.BuiltinOptions.MulOptions, T.MulOptionsEnd(b)
    raise UsageError(f"sample models do not support builtin operator {builtin}")


def _build(tensors: list[_Tensor], ops: list[_Op], inputs: list[int], outputs: list[int], description: str) -> bytes:
    b = flatbuffers.Builder(1024 + sum(len(t.data or b"") for t in tensors))
    # Buffer 0 is the empty sentinel every TFLite model starts with; constants get their own.
    buffer_data: list[bytes] = [b""]
    tensor_buffer: list[int] = []
    for t in tensors:
        if t.data is None:
            tensor_buffer.append(0)
        else:
            buffer_data.append(t.data)
            tensor_buffer.append(len(buffer_data) - 1)

    buffer_offsets = []
    for data in buffer_data:
        vec = _byte_vector(b, data) if data else None
        T.BufferStart(b)
        if vec is not None:
            T.BufferAddData(b, vec)
        buffer_offsets.append(T.BufferEnd(b))

    tensor_offsets = []
    for t, buf in zip(tensors, tensor_buffer):
        name = b.CreateString(t.name)
        shape = _int_vector(b, T.TensorStartShapeVector, list(t.shape))
        sig = _int_vector(b, T.TensorStartShapeSignatureVector, list(t.signature))
        T.TensorStart(b)
        T.TensorAddShape(b, shape)
        T.TensorAddShapeSignature(b, sig)
        T.TensorAddType(b, _TYPES[t.dtype])
        T.TensorAddBuffer(b, buf)
        T.TensorAddName(b, name)
        tensor_offsets.append(T.TensorEnd(b))

    codes = sorted({op.builtin for op in ops})
    op_offsets = []
    for op in ops:
        ins = _int_vector(b, T.OperatorStartInputsVector, list(op.inputs))
        outs = _int_vector(b, T.OperatorStartOutputsVector, list(op.outputs))
        opt_type, opt = _options(b, op.builtin)
        T.OperatorStart(b)
        T.OperatorAddOpcodeIndex(b, codes.index(op.builtin))
        T.OperatorAddInputs(b, ins)
        T.OperatorAddOutputs(b, outs)
        T.OperatorAddBuiltinOptionsType(b, opt_type)
        T.OperatorAddBuiltinOptions(b, opt)
        op_offsets.append(T.OperatorEnd(b))

    def vec_of(start, offsets):
        start(b, len(offsets))
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    t_vec = vec_of(T.SubGraphStartTensorsVector, tensor_offsets)
    o_vec = vec_of(T.SubGraphStartOperatorsVector, op_offsets)
    in_vec = _int_vector(b, T.SubGraphStartInputsVector, inputs)
    out_vec = _int_vector(b, T.SubGraphStartOutputsVector, outputs)
    sg_name = b.CreateString("main")
    T.SubGraphStart(b)
    T.SubGraphAddTensors(b, t_vec)
    T.SubGraphAddInputs(b, in_vec)
    T.SubGraphAddOutputs(b, out_vec)
    T.SubGraphAddOperators(b, o_vec)
    T.SubGraphAddName(b, sg_name)
    subgraph = T.SubGraphEnd(b)

    code_offsets = []
    for c in codes:
        T.OperatorCodeStart(b)
        T.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, 127))
        T.OperatorCodeAddBuiltinCode(b, c)
        T.OperatorCodeAddVersion(b, 1)
        code_offsets.append(T.OperatorCodeEnd(b))

    codes_vec = vec_of(T.ModelStartOperatorCodesVector, code_offsets)
    sg_vec = vec_of(T.ModelStartSubgraphsVector, [subgraph])
    buf_vec = vec_of(T.ModelStartBuffersVector, buffer_offsets)
    desc = b.CreateString(description)
    T.ModelStart(b)
    T.ModelAddVersion(b, SCHEMA_VERSION)
    T.ModelAddOperatorCodes(b, codes_vec)
    T.ModelAddSubgraphs(b, sg_vec)
    T.ModelAddDescription(b, desc)
    T.ModelAddBuffers(b, buf_vec)
    b.Finish(T.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _check_dims(**dims: int) -> None:
    for k, v in dims.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UsageError(f"sample model {k} must be a positive integer, got {v!r}")


def linear_weights(in_features: int, out_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features), dtype=np.float32) / np.float32(np.sqrt(in_features))
    bias = rng.standard_normal(out_features, dtype=np.float32)
    return w, bias


def linear_model(in_features: int = 16, out_features: int = 4, seed: int = 0) -> bytes:
    """FULLY_CONNECTED y = x·Wᵀ + b; input "x" [1, in] whose batch dim is resizable."""
    _check_dims(in_features=in_features, out_features=out_features)
    w, bias = linear_weights(in_features, out_features, seed)
    tensors = [
        _Tensor("x", (1, in_features), (-1, in_features), np.dtype(np.float32)),
        _Tensor("w", (out_features, in_features), (out_features, in_features), np.dtype(np.float32), w.tobytes()),
        _Tensor("b", (out_features,), (out_features,), np.dtype(np.float32), bias.tobytes()),
        _Tensor("y", (1, out_features), (-1, out_features), np.dtype(np.float32)),
    ]
    ops = [_Op(T.BuiltinOperator.FULLY_CONNECTED, (0, 1, 2), (3,))]
    return _build(tensors, ops, [0], [3], f"pifarm sample linear {in_features}x{out_features} seed {seed}")


def large_model(seed: int = 0, megabytes: float = 5.0) -> bytes:
    """A linear model whose weights are about `megabytes` MB (1024 inputs, float32)."""
    in_features = 1024
    out_features = max(1, int(megabytes * 1_000_000 / (4 * in_features)))
    return linear_model(in_features, out_features, seed)


def nobatch_model(length: int = 8, seed: int = 0) -> bytes:
    """MUL + ADD y = x*W + b on a rank-1 input "x" [length]: nothing to batch."""
    _check_dims(length=length)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(length, dtype=np.float32)
    bias = rng.standard_normal(length, dtype=np.float32)
    f32 = np.dtype(np.float32)
    tensors = [
        _Tensor("x", (length,), (length,), f32),
        _Tensor("w", (length,), (length,), f32, w.tobytes()),
        _Tensor("b", (length,), (length,), f32, bias.tobytes()),
        _Tensor("xw", (length,), (length,), f32),
        _Tensor("y", (length,), (length,), f32),
    ]
    ops = [_Op(T.BuiltinOperator.MUL, (0, 1), (3,)), _Op(T.BuiltinOperator.ADD, (3, 2), (4,))]
    return _build(tensors, ops, [0], [4], f"pifarm sample nobatch {length} seed {seed}")


def add_model(dtype: str = "int32", length: int = 4, seed: int = 0) -> bytes:
    """ADD y = x + b on a rank-1 input in float32, int32 or int64."""
    _check_dims(length=length)
    dt = np.dtype(dtype)
    if dt not in _TYPES:
        raise UsageError(f"add_model dtype must be one of float32, int32, int64, got {dtype!r}")
    bias = np.random.default_rng(seed).integers(-100, 100, length).astype(dt)
    tensors = [
        _Tensor("x", (length,), (length,), dt),
        _Tensor("b", (length,), (length,), dt, bias.tobytes()),
        _Tensor("y", (length,), (length,), dt),
    ]
    ops = [_Op(T.BuiltinOperator.ADD, (0, 1), (2,))]
    return _build(tensors, ops, [0], [2], f"pifarm sample add {dt.name} {length} seed {seed}")


def expected(kind: str, x: np.ndarray, seed: int = 0, **dims: int) -> np.ndarray:
    """What the sample model `kind` answers for input x, computed with numpy."""
    if kind == "linear":
        w, bias = linear_weights(dims["in_features"], dims["out_features"], seed)
        return x.astype(np.float32) @ w.T + bias
    if kind == "nobatch":
        rng = np.random.default_rng(seed)
        n = dims["length"]
        w = rng.standard_normal(n, dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        return x.astype(np.float32) * w + bias
    if kind == "add":
        dt = np.dtype(dims.get("dtype", "int32"))
        bias = np.random.default_rng(seed).integers(-100, 100, dims["length"]).astype(dt)
        return x.astype(dt) + bias
    raise UsageError(f"unknown sample model kind {kind!r}")


KINDS = {
    "linear": lambda seed: linear_model(16, 4, seed),
    "nobatch": lambda seed: nobatch_model(8, seed),
    "large": lambda seed: large_model(seed),
}


def write_sample(path: str | Path, kind: str = "linear", seed: int = 0) -> Path:
    """Write sample model `kind` (linear, nobatch, large) to path; returns the path."""
    if kind not in KINDS:
        raise UsageError(f"unknown sample model kind {kind!r}; choose one of {', '.join(KINDS)}")
    p = Path(path)
    p.write_bytes(KINDS[kind](seed))
    return p

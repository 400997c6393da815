"""Models for the fleet tests: the sample linear model, a markedly slower one with the same
signature, and a version the runtime refuses (signed, but not a model it runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tflite as T

from pifarm.appliance.demo import samplemodel as sm

IN, OUT = 16, 4


def good(path: Path, seed: int) -> Path:
    return sm.write_sample(path, "linear", seed=seed)


def slow(path: Path, width: int = 1024, layers: int = 32, seed: int = 9) -> Path:
    """x [N,16] -> FC 16->width -> (FC width->width) x layers -> FC width->4: the same inputs and
    outputs as the sample model, about layers*width*width multiply-adds more per row. The hidden
    layers share one weight tensor, so the file stays ~4 MB."""
    rng = np.random.default_rng(seed)
    f32 = np.dtype(np.float32)
    w_in = (rng.standard_normal((width, IN), dtype=np.float32) / 4).tobytes()
    w_h = (rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))).tobytes()
    w_out = (rng.standard_normal((OUT, width), dtype=np.float32) / np.float32(np.sqrt(width))).tobytes()
    zeros = lambda n: np.zeros(n, np.float32).tobytes()  # noqa: E731
    tensors = [
        sm._Tensor("x", (1, IN), (-1, IN), f32),
        sm._Tensor("w_in", (width, IN), (width, IN), f32, w_in),
        sm._Tensor("b_h", (width,), (width,), f32, zeros(width)),
        sm._Tensor("w_h", (width, width), (width, width), f32, w_h),
        sm._Tensor("w_out", (OUT, width), (OUT, width), f32, w_out),
        sm._Tensor("b_out", (OUT,), (OUT,), f32, zeros(OUT)),
    ]
    fc = T.BuiltinOperator.FULLY_CONNECTED

    def hidden(name: str) -> int:
        tensors.append(sm._Tensor(name, (1, width), (-1, width), f32))
        return len(tensors) - 1

    ops = []
    h = hidden("h0")
    ops.append(sm._Op(fc, (0, 1, 2), (h,)))
    for i in range(layers):
        nxt = hidden(f"h{i + 1}")
        ops.append(sm._Op(fc, (h, 3, 2), (nxt,)))
        h = nxt
    tensors.append(sm._Tensor("y", (1, OUT), (-1, OUT), f32))
    ops.append(sm._Op(fc, (h, 4, 5), (len(tensors) - 1,)))
    data = sm._build(tensors, ops, [0], [len(tensors) - 1], f"pifarm fleet-test slow {width}x{layers}")
    Path(path).write_bytes(data)
    return Path(path)


def unloadable(path: Path) -> Path:
    """Bytes the registry signs as format "raw": the inference server refuses to load them."""
    Path(path).write_bytes(b"not a tflite model " * 64)
    return Path(path)

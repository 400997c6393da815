"""Run one model through pifarm.inference.runtime in the tflite-runtime venv (numpy<2).

    python tflite_runtime_probe.py RUNTIME MODEL IN.npz OUT.npz

Inputs are resized to the arrays' shapes when they differ. Prints one line; exit 1 with the
PifarmError message when the runtime refuses the model (it must never crash the process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pifarm.errors import PifarmError
from pifarm.inference.runtime import build_interpreter, resolve


def main(argv: list[str]) -> int:
    name, model, inp, out = argv
    runtime = resolve(name)
    arrays = np.load(inp)
    try:
        it = build_interpreter(runtime, Path(model).read_bytes(), 1).interpreter
    except PifarmError as e:
        print(f"refused: {e}")
        return 1
    details = it.get_input_details()
    xs = [arrays[f"in{k}"] for k in range(len(details))]
    if any(tuple(d["shape"]) != x.shape for d, x in zip(details, xs)):
        for d, x in zip(details, xs):
            it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    for d, x in zip(details, xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    np.savez(out, **{d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()})
    print(f"ok {runtime.name} {runtime.version} numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

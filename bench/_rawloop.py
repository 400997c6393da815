"""The raw interpreter loop for b_inference, in a process of its own (the server's threads must
not share its GIL): reads "SECONDS" lines on stdin, answers each with one JSON line
{"tps": invokes per second, "p50": seconds per invoke}.

    python bench/_rawloop.py MODEL_FILE NPY_FILE
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from pifarm.inference.runtime import build_interpreter, resolve


def main(model_file: str, npy: str) -> None:
    x = np.load(npy)
    with open(model_file, "rb") as f:
        it = build_interpreter(resolve(), f.read(), 1).interpreter
    d = it.get_input_details()[0]
    if tuple(d["shape"]) != x.shape:
        it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    outs = [o["index"] for o in it.get_output_details()]
    print("ready", flush=True)
    for line in sys.stdin:
        seconds = float(line)
        lat = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            it.set_tensor(d["index"], x)
            it.invoke()
            for o in outs:
                np.array(it.get_tensor(o))  # the same copies out as the server makes
            lat.append(time.perf_counter() - t)
        print(json.dumps({"tps": len(lat) / sum(lat), "p50": float(np.percentile(lat, 50))}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""gRPC load generator for b_inference, run as its own process: `conc` concurrent ModelInfer
calls in a loop over one grpc.aio channel, raw input contents (as tritonclient sends them).

    python bench/_grpcload.py HOST:PORT MODEL INPUT_NAME NPY_FILE CONCURRENCY SECONDS  -> JSON stats
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import numpy as np

from pifarm.inference.proto import grpc_predict_v2_pb2 as pb


async def _client(target: str, model: str, name: str, x: np.ndarray, conc: int, seconds: float) -> dict:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    payload = req.SerializeToString()
    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as ch:
        # raw bytes in, raw bytes out: the client's own protobuf work stays off the measurement
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=None, response_deserializer=None)
        await call(payload)
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    await call(payload)
                except grpc.aio.AioRpcError:
                    errors += 1
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conc)))
        return {"n": len(lat), "seconds": time.perf_counter() - t0, "errors": errors, "lat": lat}


def main(argv: list[str]) -> None:
    target, model, name, npy, conc, seconds = argv
    x = np.load(npy)
    print(json.dumps(asyncio.run(_client(target, model, name, x, int(conc), float(seconds)))))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The gRPC endpoint: `inference.GRPCInferenceService` of grpc_predict_v2.proto over the same
request path as REST (serving.Serving), on `[inference] grpc_listen` (default: the HTTP host and
the HTTP port + 1, i.e. 8081 beside 8080; env PIFARM_INFERENCE_GRPC_LISTEN).

ModelInfer takes `raw_input_contents` (one little-endian buffer per input, as tritonclient
sends) or typed `contents`, and always answers with `raw_output_contents`. Errors are gRPC
statuses with the same one-line messages as REST: INVALID_ARGUMENT (400), NOT_FOUND (404),
UNAVAILABLE (503), UNAUTHENTICATED (401), PERMISSION_DENIED (403), RESOURCE_EXHAUSTED (413).
ServerReady is true while degraded; the state and reason ride in the trailing metadata
(x-pifarm-health, x-pifarm-health-reason).
"""

from __future__ import annotations

import concurrent.futures
from time import perf_counter_ns
from typing import Any, Callable

import grpc

from pifarm.errors import ConfigError, PifarmError, UsageError
from pifarm.inference.codec import BadInput
from pifarm.inference.proto import grpc_predict_v2_pb2 as pb
from pifarm.inference.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from pifarm.inference.repository import Repository
from pifarm.inference.serving import Serving

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}

# The typed contents field each datatype travels in (FP16 has none: raw contents only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


def _abort(context: grpc.ServicerContext, e: PifarmError) -> None:
    context.abort(CODES.get(e.http_status, grpc.StatusCode.INTERNAL), str(e))


def decode_inputs(request: pb.ModelInferRequest) -> list[tuple[str, str, list[int], Any]]:
    """The request's tensors as (name, datatype, shape, bytes | list): the protocol-neutral form."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                       f"give one per input, or use contents")
    tensors = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise BadInput(f"input {t.name}: give either contents or raw_input_contents, not both")
            tensors.append((t.name, t.datatype, shape, raw[i]))
            continue
        field = CONTENTS.get(t.datatype)
        if field is None:
            raise BadInput(f"input {t.name}: datatype {t.datatype!r} needs raw_input_contents")
        tensors.append((t.name, t.datatype, shape, list(getattr(t.contents, field))))
    return tensors


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, serving: Serving, repository: Repository):
        self.serving = serving
        self.repository = repository

    def _guard(self, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PifarmError as e:
            _abort(context, e)

    # -- health and metadata ---------------------------------------------------------------
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        h = self.serving.health()
        context.set_trailing_metadata(tuple(h.headers().items()))
        return pb.ServerReadyResponse(ready=h.ready)

    def ModelReady(self, request, context):
        ok = self._guard(context, lambda: self.serving.model_ready(request.name, request.version or None))
        return pb.ModelReadyResponse(ready=ok)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.serving.server_metadata())

    def ModelMetadata(self, request, context):
        md = self._guard(context, lambda: self.serving.model_metadata(request.name, request.version or None))
        return pb.ModelMetadataResponse(
            name=md["name"], versions=md["versions"], platform=md["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["outputs"]])

    # -- inference -------------------------------------------------------------------------
    def ModelInfer(self, request, context):
        t0 = perf_counter_ns()
        serving = self.serving
        model, version = request.model_name, request.model_version or None
        try:
            if not model:
                raise BadInput("model_name is empty")
            wanted = [o.name for o in request.outputs] or None
            call = serving.start(model, version, decode_inputs(request), wanted, t0)
            outs = serving.outputs(call)  # blocks this handler thread until the invoke is done
        except PifarmError as e:
            serving.failed(model, version, t0, e.http_status)
            _abort(context, e)
        t_enc = perf_counter_ns()
        mv = call.mv
        resp = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=request.id)
        for info, arr in outs:
            resp.outputs.add(name=info.name, datatype=info.datatype, shape=arr.shape)
            resp.raw_output_contents.append(arr.tobytes())
        serving.finish(call, t_enc)
        return resp

    # -- extensions ------------------------------------------------------------------------
    def ModelStatistics(self, request, context):
        doc = self._guard(context, lambda: self.serving.statistics(request.name or None, request.version or None))
        resp = pb.ModelStatisticsResponse()
        for s in doc["model_stats"]:
            s = dict(s)
            s.pop("pifarm", None)  # not in the protocol's message
            resp.model_stats.append(pb.ModelStatistics(
                name=s["name"], version=s["version"], last_inference=s["last_inference"],
                inference_count=s["inference_count"], execution_count=s["execution_count"],
                inference_stats=pb.InferStatistics(**{k: pb.StatisticDuration(**v)
                                                      for k, v in s["inference_stats"].items()}),
                batch_stats=[pb.InferBatchStatistics(batch_size=b["batch_size"],
                                                     **{k: pb.StatisticDuration(**v) for k, v in b.items()
                                                        if k != "batch_size"}) for b in s["batch_stats"]]))
        return resp

    def RepositoryIndex(self, request, context):
        entries = self._guard(context, lambda: self.repository.index(request.ready))
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

    def _authorize(self, context) -> None:
        auth = dict(context.invocation_metadata()).get("authorization")
        self.repository.authorize(auth)

    def _repository_write(self, request, context, action: Callable[[str], None]) -> None:
        """Load or unload: the caller's token first, then the named model."""
        def go():
            self._authorize(context)
            if not request.model_name:
                raise UsageError("model_name is empty")
            action(request.model_name)
        self._guard(context, go)

    def RepositoryModelLoad(self, request, context):
        self._repository_write(request, context, self.repository.load)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self._repository_write(request, context, self.repository.unload)
        return pb.RepositoryModelUnloadResponse()


def credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials:
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    ca = None
    if client_ca:
        with open(client_ca, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(private, chain)], root_certificates=ca, require_client_auth=ca is not None)


class GrpcEndpoint:
    """A grpcio server on its own thread pool; `port` once started (useful with port 0)."""

    def __init__(self, serving: Serving, repository: Repository, address: str, max_body: int,
                 creds: grpc.ServerCredentials | None = None, threads: int = 16):
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_body), ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(serving, repository), self._server)
        try:
            if creds is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, creds)
        except RuntimeError as e:
            raise ConfigError(f"gRPC endpoint cannot listen on {address}: {e}") from e
        if not self.port:
            raise ConfigError(f"gRPC endpoint cannot listen on {address} (address in use?)")
        self.address = address

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 5.0) -> None:
        self._server.stop(grace).wait(grace + 5)

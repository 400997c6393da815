"""The one request path below the protocols: REST (server.py, fastpath.py) and gRPC
(grpc_server.py) decode their wire format into the same tensors and call `Serving`.

    start(model, version, tensors, wanted) -> Call      fit inputs, queue on the version's pool
    outputs(call) -> [(name, array)]                      after the call's future is done
    finish(call, encode_ns) / failed(model, version, t0, status)     statistics and metrics

Also what both protocols answer alike: server and model metadata, model readiness, the three
health states, statistics and the repository operations (repository.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Sequence

import numpy as np

from pifarm import __version__
from pifarm.errors import NotFound, PifarmError, TooLarge, UsageError
from pifarm.inference.batching import Job
from pifarm.inference.codec import BadInput, TensorInfo, fit_inputs
from pifarm.inference.manager import ModelManager, NotReady
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.model import ModelVersion
from pifarm.inference.pool import Retired

PLATFORM = "tensorflow_lite"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "health_states"]

# The three health states (plus not ready): what /v2/health/ready and gRPC ServerReady say.
READY, DEGRADED, NOT_READY = "ready", "degraded", "not ready"
#: the one `model` label value of requests naming a model this server does not know (issue 20)
UNKNOWN_MODEL = "_unknown_"
HEALTH_HEADER = "x-pifarm-health"
HEALTH_REASON_HEADER = "x-pifarm-health-reason"


@dataclass(slots=True)
class Call:
    """One request between its decode and its response."""

    model: str
    mv: ModelVersion
    job: Job
    wanted: Sequence[str] | None
    t0: int          # perf_counter_ns when the protocol layer started on the request
    decoded: int     # ... when it was queued


@dataclass(frozen=True)
class Health:
    state: str                 # READY | DEGRADED | NOT_READY
    reason: str | None
    body: dict[str, Any]       # the /health document

    @property
    def ready(self) -> bool:
        """Ready for traffic: degraded serves from the cache, so it is ready too."""
        return self.state != NOT_READY

    def headers(self) -> dict[str, str]:
        h = {HEALTH_HEADER: self.state}
        if self.reason:
            h[HEALTH_REASON_HEADER] = " ".join(self.reason.split())[:300].encode("ascii", "replace").decode()
        return h

    def ready_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "state": self.state, "reason": self.reason}


class Serving:
    def __init__(self, manager: ModelManager, metrics: ServerMetrics):
        self.manager = manager
        self.metrics = metrics
        self.stats = manager.stats
        self._requests: dict[tuple[str, int], Any] = {}  # bound Prometheus children (label lookups cost)
        self._latency: dict[Any, Any] = {}  # model -> its histogram, (model, version) -> that version's

    # -- inference -------------------------------------------------------------------------
    def start(self, model: str, version: str | None, tensors: list[tuple[str, str, list[int], Any]],
              wanted: Sequence[str] | None, t0: int) -> Call:
        """Fit `tensors` (name, datatype, shape, list | bytes) to the model and queue them.
        BadInput / NotFound / NotReady / Overloaded as PifarmErrors with their status."""
        for _ in range(3):  # a swap may retire the pool between get() and put()
            active = self.manager.get(model, version)
            mv = active.version
            if mv.batch.batchable:  # before decoding: a huge leading dimension is refused unread
                self._check_rows(mv, tensors)
            arrays, rows = fit_inputs(mv.inputs, tensors, mv.batch.batchable)
            if wanted:
                names = {o.name for o in mv.outputs}
                missing = [w for w in wanted if w not in names]
                if missing:
                    raise BadInput(f"model has no output {missing[0]!r}; outputs: {', '.join(sorted(names))}")
            job = Job(arrays, rows)
            try:
                active.pool.put(job)
            except Retired:
                continue
            return Call(model, mv, job, wanted, t0, perf_counter_ns())
        raise NotReady(f"model {model} is being swapped; retry")

    @staticmethod
    def _check_rows(mv: ModelVersion, tensors: list[tuple[str, str, list[int], Any]]) -> None:
        limit = mv.settings.max_rows
        for name, _, shape, _ in tensors:
            if shape and isinstance(shape[0], int) and shape[0] > limit:
                raise BadInput(f"input {name}: {shape[0]} rows in one request; the limit is {limit} (max_rows)")

    @staticmethod
    def outputs(call: Call) -> list[tuple[TensorInfo, np.ndarray]]:
        """The outputs the request asked for (all by default), in the model's order."""
        outs = call.job.future.result()
        if call.wanted is None:
            return list(zip(call.mv.outputs, outs))
        return [(o, a) for o, a in zip(call.mv.outputs, outs) if o.name in call.wanted]

    def finish(self, call: Call, encoded: int) -> None:
        """Statistics and metrics of a request whose response bytes are ready (`encoded` ns)."""
        job, mv = call.job, call.mv
        queue_ns = int((job.started - job.enqueued) * 1e9) if job.started else 0
        done = perf_counter_ns()
        self.stats.entry(call.model, mv.version).request(done - call.t0, call.decoded - call.t0, queue_ns,
                                                         done - encoded)
        key = (call.model, mv.version)
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self.metrics.requests.labels(call.model, str(mv.version))
            self._latency[call.model] = self.metrics.latency.labels(call.model)
            self._latency[key] = self.metrics.version_latency.labels(call.model, str(mv.version))
        c.inc()
        self._latency[call.model].observe((done - call.t0) / 1e9)
        self._latency[key].observe((done - call.t0) / 1e9)

    def refine(self, model: str, e: PifarmError) -> PifarmError:
        """A bad body sent to a model that does not exist is first of all a 404 (issue 20)."""
        if isinstance(e, UsageError) and not isinstance(e, TooLarge) and not self.manager.known(model):
            return NotFound(f"model {model!r} is not served here")
        return e

    def failed(self, model: str, version: str | None, t0: int, status: int) -> None:
        if not self.manager.known(model):  # any client could mint series: unknown names share one label
            self.metrics.errors.labels(UNKNOWN_MODEL, str(status)).inc()
            return
        self.metrics.errors.labels(model, str(status)).inc()
        self.stats.failure(model, version if version and version.isdigit() else None, perf_counter_ns() - t0)

    # -- what both protocols answer alike --------------------------------------------------
    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "pifarm", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        mv = self.manager.get(model, version).version
        return {"name": mv.name, "versions": [str(mv.version)], "platform": PLATFORM,
                "inputs": [i.to_json() for i in mv.inputs], "outputs": [o.to_json() for o in mv.outputs]}

    def model_ready(self, model: str, version: str | None) -> bool:
        """True when served; False while loading or unloaded; NotFound for unknown names/versions."""
        try:
            self.manager.get(model, version)
        except NotReady:
            return False
        return True

    def health(self) -> Health:
        """live -> ready | degraded (serving from the cache, registry/storage unreachable) | not ready."""
        body = self.manager.health()
        if not body["ready"]:
            waiting = {n: m for n, m in body["models"].items() if not m.get("unloaded") and not m["ready"]}
            if not body["models"] or not waiting:
                reason = f"no model to serve in the cache ({body['status']})"
            else:
                reason = "; ".join(f"{n}: {m['error'] or ('loading' if m['loading'] else 'not loaded')}"
                                   for n, m in sorted(waiting.items()))
            return Health(NOT_READY, reason, body)
        if body["degraded"]:
            return Health(DEGRADED, body.get("degraded_reason") or "registry or storage unreachable; serving "
                          "from the cache, updates refused", body)
        return Health(READY, None, body)

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        if model is not None and not self.manager.known(model):
            raise NotFound(f"model {model!r} is not served here")
        return self.stats.triton(model, version)


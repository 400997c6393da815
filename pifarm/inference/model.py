"""A loaded model version: verified bytes, its tensors, and whether batching it pays off.

`prepare()` runs once per version on the background loader: build an interpreter, read the
tensor details, probe whether the leading dimension can be resized to a batch (and that a batch
gives the same answers as single rows), and warm up. For `batching = "auto"` the version then
serves unbatched while `calibrate()` times single rows against batches, so a model is batched
only when batching measurably raises throughput. Each worker thread gets its own `Session`
(TFLite interpreters are not thread-safe).
"""

from __future__ import annotations

import logging
import time
from time import perf_counter_ns
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pifarm.errors import InferenceError
from pifarm.inference.codec import TensorInfo, datatype_of
from pifarm.inference.loader import VerifiedModel
from pifarm.inference.runtime import DelegateSpec, Runtime, build_interpreter
from pifarm.inference.settings import ModelSettings

log = logging.getLogger(__name__)

BATCH_GAIN = 0.85         # batched per-row time must beat single-row time by 15% to switch on
CALIBRATE_BUDGET = 1.0    # seconds the background calibration may spend per model version...
CALIBRATE_MIN_ROUNDS = 9  # ...but never fewer rounds than this, nor more than
CALIBRATE_MAX_ROUNDS = 60
PENDING = "batchable; serving unbatched until calibration decides"


def buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a session keeps an interpreter for: powers of two, then max_batch itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return tuple(out)


class Session:
    """The interpreters one worker thread owns (TFLite interpreters are not thread-safe).

    A batchable model keeps one interpreter per bucket size, allocated once, and pads a batch
    up to its bucket: re-allocating tensors on every size change would cost more than the
    padded rows. A batch larger than max_batch (one big request) gets an exact-size interpreter.
    """

    def __init__(self, make: Callable[[], Any], first: Any, inputs: list[TensorInfo],
                 outputs: list[TensorInfo], max_batch: int | None):
        self._make = make
        self.inputs = inputs
        self.outputs = outputs
        self._buckets = buckets(max_batch) if max_batch else ()
        rows = int(first.get_input_details()[0]["shape"][0]) if max_batch and inputs else None
        self._interps: dict[int | None, Any] = {rows: first}
        self.phases = (0, 0, 0)  # ns of the last run: copying in, invoke, copying out (statistics)

    def _interp(self, rows: int | None, arrays: list[np.ndarray]) -> Any:
        it = self._interps.get(rows)
        if it is None:
            if len(self._interps) > len(self._buckets) + 1:
                # only the exact-size slot churns; drop it rather than grow without bound
                self._interps = {k: v for k, v in self._interps.items() if k in self._buckets}
            it = self._make()
            for info, a in zip(self.inputs, arrays):
                it.resize_tensor_input(info.index, list(a.shape), strict=False)
            it.allocate_tensors()
            self._interps[rows] = it
        return it

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if not self._buckets:
            return self._invoke(self._interps[None], arrays, perf_counter_ns())
        t0 = perf_counter_ns()
        n = int(arrays[0].shape[0])
        size = next((b for b in self._buckets if b >= n), n)
        if size != n:
            arrays = [np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)]) for a in arrays]
        out = self._invoke(self._interp(size, arrays), arrays, t0)
        return [o[:n] for o in out] if size != n else out

    def _invoke(self, it: Any, arrays: list[np.ndarray], t0: int) -> list[np.ndarray]:
        for info, a in zip(self.inputs, arrays):
            it.set_tensor(info.index, a)
        t1 = perf_counter_ns()
        it.invoke()
        t2 = perf_counter_ns()
        # Copies: the interpreter reuses its buffers on the next invoke.
        out = [np.array(it.get_tensor(o.index)) for o in self.outputs]
        self.phases = (t1 - t0, t2 - t1, perf_counter_ns() - t2)
        return out


@dataclass
class BatchDecision:
    batchable: bool     # the leading dim resizes and a batch answers like single rows
    enabled: bool       # the server will gather batches for this version
    reason: str
    single_ms: float | None = None
    batched_ms_per_row: float | None = None


def sample_inputs(inputs: list[TensorInfo], rows: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for info in inputs:
        shape = tuple(max(d, 1) for d in info.shape)
        if rows is not None:
            shape = (rows,) + shape[1:]
        if info.dtype.kind == "f":
            a = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            a = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            a = rng.integers(0, 8, shape).astype(info.dtype)
        out.append(a)
    return out


class ModelVersion:
    """Everything the server needs about one verified version; cheap to hand between threads."""

    def __init__(self, verified: VerifiedModel, runtime: Runtime, settings: ModelSettings):
        self.name = verified.name
        self.version = verified.version
        self.manifest_digest = verified.manifest_digest
        self.manifest = verified.manifest
        self.runtime = runtime
        self.settings = settings
        self._content = verified.content
        self.blob_digest = verified.manifest.primary.digest if verified.manifest is not None else None
        self._delegate = DelegateSpec(settings.delegate, settings.delegate_options) if settings.delegate else None
        self.delegate_warning: str | None = None
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.batch = BatchDecision(False, False, "not prepared")
        self.load_seconds = 0.0

    def _raw(self) -> Any:
        built = build_interpreter(self.runtime, self._content, self.settings.num_threads, self._delegate)
        if built.delegate_warning and not self.delegate_warning:
            self.delegate_warning = built.delegate_warning
        return built.interpreter

    def new_session(self, first: Any = None) -> Session:
        max_batch = self.settings.max_batch if self.batch.batchable else None
        return Session(self._raw, first if first is not None else self._raw(), self.inputs, self.outputs, max_batch)

    def prepare(self) -> Session:
        """Read tensors, decide batching, warm up; returns the first session (for the pool)."""
        t0 = time.perf_counter()
        first = self._raw()
        in_d, out_d = first.get_input_details(), first.get_output_details()
        self.inputs = [self._info(d) for d in in_d]
        self.outputs = [self._info(d) for d in out_d]
        self.batch = self._decide(first)
        if self.batch.batchable:
            # Advertise the batch dimension as -1 (KServe's "any size").
            self.inputs = [TensorInfo(i.name, i.index, i.dtype, (-1,) + i.shape[1:]) for i in self.inputs]
            self.outputs = [TensorInfo(o.name, o.index, o.dtype, (-1,) + o.shape[1:]) for o in self.outputs]
        session = self.new_session(first)
        if self.settings.warmup:
            session.run(sample_inputs(self.inputs, 1 if self.batch.batchable else None, np.random.default_rng(0)))
        self.load_seconds = time.perf_counter() - t0
        return session

    def _info(self, d: dict) -> TensorInfo:
        dtype = np.dtype(d["dtype"])
        try:
            datatype_of(dtype)
        except Exception as e:
            raise InferenceError(f"model {self.name}: tensor {d['name']} has type {dtype}, which KServe V2 cannot carry") from e
        return TensorInfo(str(d["name"]), int(d["index"]), dtype, tuple(int(x) for x in d["shape"]))

    def _decide(self, first: Any) -> BatchDecision:
        mode = self.settings.batching
        if mode == "off":
            return BatchDecision(False, False, "batching = off")
        if not self.inputs or any(len(i.shape) < 1 or i.shape[0] != 1 for i in self.inputs):
            return BatchDecision(False, False, "an input has no leading batch dimension of 1")
        if any(len(o.shape) < 1 for o in self.outputs):
            return BatchDecision(False, False, "an output has no leading dimension")
        if self.settings.max_batch < 2:
            return BatchDecision(False, False, "max_batch = 1")
        rows = sample_inputs(self.inputs, 2, np.random.default_rng(1))
        try:
            # Probe on a throwaway interpreter so a failed resize cannot break the first one.
            probe = self._raw()
            for info, a in zip(self.inputs, rows):
                probe.resize_tensor_input(info.index, list(a.shape), strict=False)
            probe.allocate_tensors()
            batched = Session(self._raw, probe, self.inputs, self.outputs, None).run(rows)
            single = Session(self._raw, first, self.inputs, self.outputs, None)
            singles = [single.run([r[k : k + 1] for r in rows]) for k in range(2)]
        except (ValueError, RuntimeError, InferenceError) as e:
            return BatchDecision(False, False, f"the input does not resize to a batch ({' '.join(str(e).split())[:120]})")
        for j, out in enumerate(batched):
            if out.shape[:1] != (2,):
                return BatchDecision(False, False, f"output {self.outputs[j].name} does not follow the batch size")
            for k in range(2):
                if not np.allclose(out[k : k + 1], singles[k][j], rtol=1e-4, atol=1e-5):
                    return BatchDecision(False, False, "a batch does not give the same answers as single rows")
        if mode == "on":
            return BatchDecision(True, True, "batching = on")
        return BatchDecision(True, False, PENDING)

    @property
    def needs_calibration(self) -> bool:
        return self.batch.batchable and self.batch.reason == PENDING

    def calibrate(self) -> BatchDecision:
        """Time single rows against batches and decide (batching = "auto").

        Runs after the version is already serving unbatched, so it never delays a swap; the
        caller applies the decision to the live pool. Batching is switched on only when both a
        pair and a full batch cost clearly less per row than single rows: a pair is the batch a
        lightly loaded server gathers most often, a full batch the one it gathers under load."""
        one, ratios = self._calibrate()
        worst = max(ratios.values())
        full = ratios[max(ratios)]
        shown = ", ".join(f"batch {b}: {r:.2f}x the per-row time" for b, r in sorted(ratios.items()))
        if worst < BATCH_GAIN:
            return BatchDecision(True, True, f"batching pays ({shown} of single rows, {one * 1e3:.3f} ms)",
                                 one * 1e3, one * full * 1e3)
        return BatchDecision(True, False, f"batching measured no gain ({shown} of single rows, "
                             f"{one * 1e3:.3f} ms); not gathering batches", one * 1e3, one * full * 1e3)

    def _calibrate(self) -> tuple[float, dict[int, float]]:
        """(median seconds of a single-row invoke, {batch size: median per-row time / single time}).

        Each round times one single row and then each batch size back to back, and the ratio is
        taken within the round: on a shared machine the absolute times swing with the load, but
        neighbouring runs see the same load, so the median of per-round ratios is stable."""
        n = self.settings.max_batch
        sizes = sorted({2, n}) if n > 2 else [n]
        infos = [TensorInfo(i.name, i.index, i.dtype, (-1,) + i.shape[1:]) for i in self.inputs]
        session = Session(self._raw, self._raw(), infos, self.outputs, n)
        rng = np.random.default_rng(2)
        one = sample_inputs(infos, 1, rng)
        batches = {b: sample_inputs(infos, b, rng) for b in sizes}
        session.run(one)
        for b in sizes:
            session.run(batches[b])
        ones: list[float] = []
        ratios: dict[int, list[float]] = {b: [] for b in sizes}
        deadline = time.perf_counter() + CALIBRATE_BUDGET
        for i in range(CALIBRATE_MAX_ROUNDS):
            t = time.perf_counter()
            session.run(one)
            t1 = time.perf_counter() - t
            ones.append(t1)
            for b in sizes:
                t = time.perf_counter()
                session.run(batches[b])
                ratios[b].append((time.perf_counter() - t) / b / max(t1, 1e-9))
            if i + 1 >= CALIBRATE_MIN_ROUNDS and time.perf_counter() > deadline:
                break
        return float(np.median(ones)), {b: float(np.median(r)) for b, r in ratios.items()}


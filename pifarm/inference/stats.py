"""The statistics extension: where each request's time goes, per model version and batch size.

Figures follow Triton's `GET /v2/models/{m}[/versions/{v}]/stats` document (and its gRPC
ModelStatistics message): success and failure counts with their total ns, and the time spent
queued (waiting for a worker and for a batch to gather), in compute-input (stacking rows and
copying them into the interpreter), compute-infer (the invoke) and compute-output (copying out
and splitting the batch), overall and per batch size. pifarm adds the two protocol phases
Triton folds into "success" — decode (request bytes to arrays) and encode (arrays to response
bytes) — so the split of a request is complete. The same phases are Prometheus histograms:

    pifarm_inference_phase_seconds{model,phase}   phase = decode | queue | compute_input |
                                                  compute_infer | compute_output | encode

Recording is a handful of integer additions under a per-version lock, histogram buckets
included: the histograms are rendered from these counters at scrape time by a collector, so a
request creates no Python objects for its metrics and takes no other lock.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily

PHASES = ("decode", "queue", "compute_input", "compute_infer", "compute_output", "encode")
PHASE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5)
_BOUNDS_NS = tuple(int(b * 1e9) for b in PHASE_BUCKETS)


class VersionStats:
    """Counters of one model version; every field is [count, ns] except the plain counters."""

    __slots__ = ("name", "version", "lock", "success", "fail", "queue", "compute_input", "compute_infer",
                 "compute_output", "decode", "encode", "inference_count", "execution_count", "last_inference",
                 "batches", "hist")

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        # phase -> per-bucket counts (last: +Inf) followed by the sum in ns
        self.hist: dict[str, list[int]] = {p: [0] * (len(_BOUNDS_NS) + 2) for p in PHASES}
        self.lock = threading.Lock()
        for f in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "decode", "encode"):
            setattr(self, f, [0, 0])
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        self.batches: dict[int, list[int]] = {}  # batch size -> [n, in_ns, n, infer_ns, n, out_ns]

    def execution(self, batch_size: int, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One interpreter invoke of `batch_size` requests carrying `rows` rows (worker thread)."""
        with self.lock:
            self.execution_count += 1
            self.inference_count += rows
            self.last_inference = time.time_ns() // 1_000_000
            for acc, ns in ((self.compute_input, input_ns), (self.compute_infer, infer_ns),
                            (self.compute_output, output_ns)):
                acc[0] += batch_size
                acc[1] += ns * batch_size  # every request of the batch spent this time
            b = self.batches.get(batch_size)
            if b is None:
                b = self.batches[batch_size] = [0, 0, 0, 0, 0, 0]
            b[0] += 1
            b[1] += input_ns
            b[2] += 1
            b[3] += infer_ns
            b[4] += 1
            b[5] += output_ns
            h = self.hist
            for phase, ns in (("compute_input", input_ns), ("compute_infer", infer_ns),
                              ("compute_output", output_ns)):
                counts = h[phase]
                counts[bisect_left(_BOUNDS_NS, ns)] += 1
                counts[-1] += ns

    def request(self, total_ns: int, decode_ns: int, queue_ns: int, encode_ns: int) -> None:
        """One successful request, end to end (protocol thread)."""
        with self.lock:
            self.success[0] += 1
            self.success[1] += total_ns
            self.queue[0] += 1
            self.queue[1] += queue_ns
            self.decode[0] += 1
            self.decode[1] += decode_ns
            self.encode[0] += 1
            self.encode[1] += encode_ns
            h = self.hist
            for phase, ns in (("decode", decode_ns), ("queue", queue_ns), ("encode", encode_ns)):
                counts = h[phase]
                counts[bisect_left(_BOUNDS_NS, ns)] += 1
                counts[-1] += ns

    def failure(self, total_ns: int) -> None:
        with self.lock:
            self.fail[0] += 1
            self.fail[1] += total_ns

    def to_json(self) -> dict[str, Any]:
        def d(acc: list[int]) -> dict[str, int]:
            return {"count": acc[0], "ns": acc[1]}

        with self.lock:
            return {
                "name": self.name, "version": self.version, "last_inference": self.last_inference,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": d(self.success), "fail": d(self.fail), "queue": d(self.queue),
                                    "compute_input": d(self.compute_input), "compute_infer": d(self.compute_infer),
                                    "compute_output": d(self.compute_output),
                                    "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
                "batch_stats": [{"batch_size": size, "compute_input": {"count": b[0], "ns": b[1]},
                                 "compute_infer": {"count": b[2], "ns": b[3]},
                                 "compute_output": {"count": b[4], "ns": b[5]}}
                                for size, b in sorted(self.batches.items())],
                "memory_usage": [],
                # pifarm's protocol phases (Triton counts them inside "success")
                "pifarm": {"decode": d(self.decode), "encode": d(self.encode)},
            }


class Statistics:
    """Every model version's VersionStats, plus the phase histograms on the server's registry."""

    def __init__(self, registry: CollectorRegistry):
        self._lock = threading.Lock()
        self._by: dict[tuple[str, str], VersionStats] = {}
        registry.register(self)

    def describe(self) -> list:
        return []  # names are only known at scrape time; describing none keeps registration cheap

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """pifarm_inference_phase_seconds{model,phase}, summed over each model's versions."""
        fam = HistogramMetricFamily("pifarm_inference_phase_seconds",
                                    "Time a request spends in each phase: decode, queue, compute_input, "
                                    "compute_infer, compute_output, encode", labels=["model", "phase"])
        with self._lock:
            entries = list(self._by.values())
        totals: dict[tuple[str, str], list[int]] = {}
        for e in entries:
            with e.lock:
                for phase, counts in e.hist.items():
                    acc = totals.setdefault((e.name, phase), [0] * len(counts))
                    for i, c in enumerate(counts):
                        acc[i] += c
        for (model, phase), counts in sorted(totals.items()):
            cum, buckets = 0, []
            for bound, c in zip(list(PHASE_BUCKETS) + [float("inf")], counts[:-1]):
                cum += c
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cum))
            fam.add_metric([model, phase], buckets, counts[-1] / 1e9)
        yield fam

    def entry(self, model: str, version: int | str) -> VersionStats:
        key = (model, str(version))
        e = self._by.get(key)
        if e is None:
            with self._lock:
                e = self._by.get(key)
                if e is None:
                    e = self._by[key] = VersionStats(model, str(version))
        return e

    def failure(self, model: str, version: int | str | None, total_ns: int) -> None:
        """A failed request; one for an unknown model is counted nowhere (no entry is made for
        names a client invents, so a scan cannot grow the table)."""
        if version is None:
            with self._lock:
                known = [e for (m, _), e in self._by.items() if m == model]
            if not known:
                return
            e = max(known, key=lambda x: int(x.version) if x.version.isdigit() else -1)
        else:
            e = self.entry(model, version)
        e.failure(total_ns)

    def forget(self, model: str, keep: set[str]) -> None:
        """Drop the entries of versions no longer served nor kept (a model unloaded for good)."""
        with self._lock:
            for key in [k for k in self._by if k[0] == model and k[1] not in keep]:
                del self._by[key]

    def triton(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """{"model_stats": [...]} for every version seen of `model` (or of every model)."""
        with self._lock:
            entries = sorted(self._by.values(), key=lambda e: (e.name, e.version))
        return {"model_stats": [e.to_json() for e in entries
                                if (model is None or e.name == model) and (version is None or e.version == version)]}

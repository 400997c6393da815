"""Prometheus metrics of one inference server, on a registry of its own (no global state).

    pifarm_inference_requests_total{model,version}          completed infer requests
    pifarm_inference_errors_total{model,code}                failed requests by HTTP status (model
                                                             "_unknown_" for names not served here)
    pifarm_inference_request_seconds{model}                  end-to-end infer latency
    pifarm_inference_version_request_seconds{model,version} the same per version (node reports, rollout gates)
    pifarm_inference_queue_depth{model}                      jobs waiting for a worker
    pifarm_inference_batch_size{model}                       rows per invoke
    pifarm_inference_workers{model}                          worker threads of the active version
    pifarm_inference_model_load_seconds{model}               verify + build + warm-up time
    pifarm_inference_model_load_failures_total{model}        versions refused (integrity, runtime)
    pifarm_inference_active_version{model}                   version being served (0 = none)
    pifarm_inference_delegate_fallback_total{model}          delegate failed, ran on CPU instead
    pifarm_inference_degraded                                1 while the node is degraded
    pifarm_inference_ref_events_total                        changes under <cache>/refs seen by the watch
    pifarm_inference_rescans_total{cause}                    reconcile passes (event | poll | start | retry)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pifarm.cache.metrics import add_process_collectors

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        add_process_collectors(r)  # process_* and python_gc_*: once per process, on its one /metrics
        #: other registries of the same process shown on this /metrics (the node daemon's cache,
        #: source and watcher metrics under `pifarm node run`: one endpoint per node to scrape)
        self.also: list[CollectorRegistry] = []
        p = "pifarm_inference_"
        self.requests = Counter(p + "requests", "Completed inference requests", ["model", "version"], registry=r)
        self.errors = Counter(p + "errors", "Failed requests by HTTP status", ["model", "code"], registry=r)
        self.latency = Histogram(p + "request_seconds", "Inference request latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        # per version: what a node reports to its aggregator, and what rollout gates compare
        self.version_latency = Histogram(p + "version_request_seconds", "Inference request latency per version",
                                         ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a worker", ["model"], registry=r)
        self.batch_size = Histogram(p + "batch_size", "Rows per interpreter invoke", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.workers = Gauge(p + "workers", "Worker threads of the active version", ["model"], registry=r)
        self.load_seconds = Histogram(p + "model_load_seconds", "Verify, build and warm-up time of a version",
                                      ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.load_failures = Counter(p + "model_load_failures", "Model versions that failed to load",
                                     ["model"], registry=r)
        self.active_version = Gauge(p + "active_version", "Model version being served (0 = none)", ["model"], registry=r)
        self.delegate_fallback = Counter(p + "delegate_fallback", "Delegate failed to load; ran on CPU",
                                         ["model"], registry=r)
        self.degraded = Gauge(p + "degraded", "1 while the node reports degraded read-only mode", registry=r)
        # An idle node must show both flat: they count wake-ups, so a feedback loop shows at once.
        self.ref_events = Counter(p + "ref_events", "Changes under <cache>/refs seen by the ref watch", registry=r)
        self.rescans = Counter(p + "rescans", "Passes over the cache refs, by what woke them", ["cause"], registry=r)

    #: node metrics files (`<state_dir>/node-metrics.prom`, written by `pifarm node run --no-serve`
    #: beside this server) appended while fresh: the node's one /metrics is still this port (issue 20)
    files: tuple = ()

    def render(self) -> bytes:
        import time

        out = generate_latest(self.registry) + b"".join(generate_latest(r) for r in self.also)
        for p in self.files:
            try:
                if time.time() - p.stat().st_mtime <= NODE_METRICS_FRESH:
                    out += p.read_bytes()
            except OSError:
                pass
        return out


#: seconds a node metrics file counts as live (its writer rewrites it every 10 s)
NODE_METRICS_FRESH = 60.0
NODE_METRICS_FILE = "node-metrics.prom"

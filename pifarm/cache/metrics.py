"""Prometheus metrics of the node side (cache, sources, watcher).

One `NodeMetrics` per process, owning its own CollectorRegistry (no global default registry),
passed down to whatever records into it. The inference server can expose `registry` next to its
own metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


def add_process_collectors(r: CollectorRegistry) -> None:
    """process_* (CPU, resident memory, open fds, start time), python_gc_* and python_info on `r`:
    every daemon exports them once, on its one /metrics (an idle node's growth shows there)."""
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    ProcessCollector(registry=r)
    GCCollector(registry=r)
    PlatformCollector(registry=r)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False):
        """process: also the process_*/python_gc_* collectors (when nothing else of this process,
        such as the inference server's registry beside it, exports them)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            add_process_collectors(r)
        self.blobs_installed = Counter(
            "pifarm_cache_blobs_installed", "Blobs verified and installed, by the source that served them",
            ["source"], registry=r)
        self.bytes_fetched = Counter(
            "pifarm_cache_fetched_bytes", "Bytes received from sources", ["source"], registry=r)
        self.rejected = Counter(
            "pifarm_cache_rejected_blobs", "Blobs a source delivered that failed verification", ["source"], registry=r)
        self.source_failures = Counter(
            "pifarm_source_failures", "Transport failures or deadline misses, by source", ["source"], registry=r)
        self.evictions = Counter("pifarm_cache_evictions", "Blobs evicted to stay within the byte budget", registry=r)
        self.budget_refusals = Counter(
            "pifarm_cache_budget_refusals", "Installs refused because pinned blobs fill the budget", registry=r)
        self.tampered = Counter(
            "pifarm_cache_tampered_blobs", "Blobs found modified or deleted behind the cache's back", registry=r)
        self.scrub_damaged = Counter("pifarm_cache_scrub_damaged", "Blobs a scrub found damaged", registry=r)
        self.cache_bytes = Gauge("pifarm_cache_bytes", "Bytes held in verified blobs", registry=r)
        self.degraded = Gauge("pifarm_node_degraded", "1 while the node runs degraded read-only", registry=r)
        self.revision = Gauge("pifarm_node_snapshot_revision", "Highest snapshot revision verified", registry=r)
        self.metadata_failures = Counter(
            "pifarm_node_metadata_failures", "Failed snapshot fetches, by path", ["path"], registry=r)
        self.snapshots_refused = Counter(
            "pifarm_node_snapshots_refused", "Snapshots refused (unknown key, bad signature, rollback, expired)",
            registry=r)
        self.activations = Counter("pifarm_node_activations", "Model versions made active", ["model"], registry=r)

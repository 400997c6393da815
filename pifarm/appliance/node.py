"""`pifarm node run`: the node daemon.

Wires the pieces together and owns their threads: the cache (start-up recovery, budget), the
source chain from `[[sources]]`, the watcher (long-poll, S3 fallback, degraded mode), the tamper
watch and the periodic scrub; then it runs the inference server in the foreground
(`serve_inference`, the one seam to pifarm.inference) until SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

from pifarm.appliance import node_peers, node_report
from pifarm.appliance.config import NodeConfig
from pifarm.cache import owner
from pifarm.cache.metrics import NodeMetrics
from pifarm.client.failover import aggregator_client
from pifarm.cache.store import Cache
from pifarm.cache.tamper import TamperWatch
from pifarm.errors import ConfigError, PifarmError
from pifarm.initiator.chain import build_sources, close_all, default_specs
from pifarm.initiator.s3_source import S3Documents
from pifarm.initiator.settings import SourceContext, SourceSpec
from pifarm.inference.metrics import NODE_METRICS_FILE
from pifarm.initiator.watcher import Watcher
from pifarm.listen import bind_listen, parse_listen
from pifarm.signed.integrity import BlobRef
from pifarm.signed.signing import TrustedKeys

log = logging.getLogger(__name__)


def trusted_keys(paths: list[str]) -> TrustedKeys:
    if not paths:
        raise ConfigError("no trusted registry keys: set [node] trusted_keys = [\"/etc/pifarm/signing.pub\"] "
                          "or pass --trust FILE (the aggregator's keys/signing.pub)")
    return TrustedKeys.from_files(paths)


def budget_source(c: NodeConfig) -> str:
    """Where [cache] max_bytes came from, for `cache ls` (a budget set only in a unit's environment
    is invisible to a shell's `cache ls` otherwise)."""
    if c.cache.max_bytes is None:
        return "no [cache] max_bytes set"
    if os.environ.get("PIFARM_CACHE_MAX_BYTES"):
        return "environment PIFARM_CACHE_MAX_BYTES"
    return f"[cache] max_bytes in {c.origin}"


class NodeDaemon:
    """Everything of `node run` except the inference server; start() then stop()."""

    def __init__(self, cfg: NodeConfig, metrics: NodeMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or NodeMetrics()
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self.cache: Cache | None = None
        self.watcher: Watcher | None = None
        self.tamper: TamperWatch | None = None
        self.sources: list = []
        self.reporter: Any = None  # pifarm.initiator.report.Reporter, see node_report.attach
        self._metrics_server: Any = None  # (httpd, thread) of [node] metrics_listen
        self._locks: list[int] = []  # owner.lock fds of the state dir and the cache
        self.inference_url: str | None = None  # set by run_node when it serves inference
        self.export_metrics = False  # --no-serve: metrics to <state_dir>/node-metrics.prom for `pifarm serve`

    def start(self) -> None:
        c = self.cfg
        trusted = trusted_keys(c.node.trusted_keys)
        state_dir = Path(c.node.state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"state directory {state_dir} cannot be created: {e.strerror}") from e
        self.claim()
        self.cache = Cache(c.cache.root, c.cache.max_bytes, metrics=self.metrics)
        owner.describe(c.cache.root, max_bytes=c.cache.max_bytes, budget_from=budget_source(c))
        tls = c.node.tls_context()
        urls = c.node.aggregator_urls  # several aggregators of one farm: the first, then the next on failure
        ctx = SourceContext(
            trusted=trusted, aggregator_url=urls[0] if urls else "", state_dir=state_dir, cache_root=Path(c.cache.root),
            host_identity_path=Path(c.node.host_identity) if c.node.host_identity else None, s3=c.s3,
            metrics=self.metrics, tls=tls,
        )
        # no [[sources]]: peers first for large blobs another node has ([peers]), then as before
        peers = None if c.sources else node_peers.default_options(c)
        specs = list(c.sources) or default_specs(urls[0] if urls else "", c.s3.url, peers)
        if not c.sources and len(urls) > 1:  # blobs over HTTP from each aggregator in turn, then S3
            specs = ([s for s in specs if s.kind == "peers"] + [SourceSpec("http", deadline=120.0, url=u) for u in urls]
                     + [s for s in specs if s.kind not in ("http", "peers")])
        self.sources = build_sources(specs, ctx, strict=False)
        aggregator = (aggregator_client(urls, connect_timeout=c.watcher.connect_timeout, tls=tls)
                      if urls else None)
        s3 = None
        if c.s3.url:
            quick = dataclasses.replace(c.s3, connect_timeout=c.watcher.connect_timeout, read_timeout=10.0)
            s3 = S3Documents(quick)
        self.watcher = Watcher(
            cache=self.cache, sources=self.sources, trusted=trusted, state_dir=state_dir, channel=c.node.channel,
            models=c.node.models, aggregator=aggregator, s3=s3, settings=c.watcher, metrics=self.metrics,
        )
        if c.node.metrics_listen:
            from prometheus_client import start_http_server

            host, port = parse_listen(c.node.metrics_listen)
            self._metrics_server = start_http_server(port, addr=host, registry=self.metrics.registry)
        if self.inference_url:
            self.watcher.state.inference_url = self.inference_url  # where `pifarm status` asks /health
        self.reporter = node_report.attach(self)
        self.peers = node_peers.attach(self)  # [[sources]] kind = "peers": piece server + tracker credentials
        self._spawn("watcher", self.watcher.run, self.stop_event)
        if self.reporter is not None:
            self._spawn("reporter", self.reporter.run, self.stop_event)
        export = state_dir / NODE_METRICS_FILE
        if self.export_metrics:
            self._spawn("metrics-export", self._export_metrics, export)
        else:
            export.unlink(missing_ok=True)  # served in this process now: no stale copy beside it
        if c.cache.tamper_watch:
            self.tamper = TamperWatch(self.cache, on_damage=self._refetch)
            self.tamper.start()
        if c.cache.scrub_interval:
            self._spawn("scrub", self._scrub_loop)

    def claim(self) -> None:
        """One owner per state dir and per cache: a second daemon is refused naming this one's pid,
        and a read-only directory is one line here, not a traceback at the first state write."""
        if not self._locks:
            self._locks = [owner.acquire(self.cfg.node.state_dir, "state directory"),
                           owner.acquire(self.cfg.cache.root, "cache")]

    def _export_metrics(self, path: Path) -> None:
        """Under --no-serve, `pifarm serve` (pifarm-inference.service) is the node's /metrics: it
        appends this file, rewritten every 10 s, so the cache, source and watcher metrics are
        scraped where the inference metrics are. Only pifarm_* families: process_* are per process."""
        from prometheus_client import generate_latest

        from pifarm.durable import atomic_write

        while True:
            text = generate_latest(self.metrics.registry).decode()
            keep = [ln for ln in text.splitlines()
                    if (ln.split(" ", 3)[2] if ln.startswith("#") and ln.count(" ") >= 2 else ln).startswith("pifarm_")]
            try:
                atomic_write(path, ("\n".join(keep) + "\n").encode(), 0o644)
            except OSError as e:
                log.warning("cannot write %s: %s", path, e.strerror)
            if self.stop_event.wait(10.0):
                path.unlink(missing_ok=True)
                return

    def _spawn(self, name: str, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _refetch(self, digest: str, what: str) -> None:
        """A pinned blob was damaged: fetch it again through the chain (the tamper watch thread)."""
        assert self.cache is not None
        sizes = self.cache.referenced_sizes()
        if digest not in self.cache.pinned() or digest not in sizes:
            return
        try:
            res = self.cache.install(BlobRef(digest, sizes[digest]), self.sources)
            log.warning("re-fetched %s (%s) from %s", digest, what, res.source)
        except PifarmError as e:
            log.error("could not re-fetch damaged blob %s: %s", digest, e)

    def _scrub_loop(self) -> None:
        assert self.cache is not None
        interval = self.cfg.cache.scrub_interval
        while not self.stop_event.wait(interval * random.uniform(0.9, 1.1)):
            rep = self.cache.verify_all(self.cfg.cache.scrub_rate, stop=self.stop_event)
            for msg, digest in zip(rep.damaged, rep.damaged_digests):
                log.error("scrub: %s", msg)
                self._refetch(digest, "damaged at rest")

    def stop(self) -> None:
        self.stop_event.set()
        if self.reporter is not None:
            self.reporter.poke()  # it waits on its own event
        if self.tamper is not None:
            self.tamper.stop()
        for t in self._threads:
            t.join(timeout=10)
        if self.watcher is not None:
            self.watcher.close()
        if getattr(self, "peers", None) is not None:
            self.peers.stop()
        close_all(self.sources)
        if self._metrics_server is not None:
            httpd, _thread = self._metrics_server
            httpd.shutdown()
            httpd.server_close()
        for fd in self._locks:
            os.close(fd)
        self._locks = []


def serve_inference(cfg: NodeConfig, host: str, port: int, stop: threading.Event, metrics: Any = None,
                    sock: Any = None) -> None:
    """The seam to pifarm.inference: run its KServe V2 server in the foreground until a signal."""
    from pifarm.inference.server import serve
    from pifarm.inference.settings import InferenceSettings

    settings = cfg.inference if cfg.inference is not None else InferenceSettings()
    if not settings.trusted_keys and cfg.node.trusted_keys:
        settings = dataclasses.replace(settings, trusted_keys=list(cfg.node.trusted_keys))
    # the node's own metrics (cache, sources, watcher) on the inference port's /metrics too
    serve(settings, Path(cfg.cache.root), Path(cfg.node.state_dir), host=host, port=port,
          extra_metrics=[metrics.registry] if metrics is not None else [], sock=sock)


def run_node(cfg: NodeConfig, serve: bool = True) -> int:
    """Blocking `pifarm node run`; returns the exit code."""
    from pifarm.appliance import loglevel, threaddump

    loglevel.daemon(cfg.node.log_level)
    threaddump.install()  # `kill -USR1` dumps every thread's stack (from a normal thread: issue 19)
    sock = None
    daemon = NodeDaemon(cfg, metrics=NodeMetrics(process=not serve))  # serving: the server's registry has them
    daemon.claim()  # before anything else: a second node on these directories names the first
    daemon.export_metrics = not serve
    try:
        host, port = parse_listen(cfg.node.listen)
        if serve:  # bind first: a taken port is one line now, not after pulling every model
            sock = bind_listen(host, port, "[node] listen")
        # served here, or by `pifarm serve` (pifarm-inference.service) on the same [node] listen
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        daemon.inference_url = f"http://{f'[{local}]' if ':' in local else local}:{port}"
        daemon.start()
    except BaseException:
        if sock is not None:
            sock.close()
        daemon.stop()
        raise
    log.info("node: cache %s, state %s, channel %s, sources %s", cfg.cache.root, cfg.node.state_dir,
             cfg.node.channel, ", ".join(s.name for s in daemon.sources) or "none")
    try:
        if serve:
            serve_inference(cfg, host, port, daemon.stop_event, daemon.metrics, sock)  # uvicorn handles SIGINT/SIGTERM
        else:
            done = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: done.set())
            done.wait()
    finally:
        daemon.stop()
    return 0

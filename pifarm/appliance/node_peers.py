"""The node's peer part: the piece server and the credentials of its `peers` source.

`default_options(cfg)` decides whether the default chain (no `[[sources]]` listed) starts with
the peer source: [peers] enabled (the default), an aggregator to track, a node id, and a way to
authenticate to the tracker (the report token, or the client certificate under mTLS). Otherwise
the chain is the one before peers existed, and the log says why.

`attach(daemon)` finds a `kind = "peers"` source in the chain, gives it the node id and report
token it asks the tracker with, starts the piece server on the source's `listen` (HTTPS with the
farm's client certificates when [node] has them, see `pifarm.initiator.peer_tls`), and keeps the
large blobs the cache holds announced as complete (so peers find them after a restart too). For
the default chain's source a problem (port taken, certificate unusable) turns peers off with a
warning; for a `[[sources]]` entry someone wrote, it stops the node with one line.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pifarm.appliance.node_report import report_token
from pifarm.errors import ConfigError, PifarmError
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.settings import PIECE_PORT, PeerOptions
from pifarm.listen import parse_listen
from pifarm.signed.integrity import BlobRef

log = logging.getLogger(__name__)

SEED_INTERVAL = 30.0  # well inside the tracker's TTL


class NodePeers:
    def __init__(self, source, server, stop: threading.Event, cache):
        self.source, self.server, self.stop_event, self.cache = source, server, stop, cache
        self.thread = threading.Thread(target=self._seed_loop, name="peers-seed", daemon=True)

    def _seed_loop(self) -> None:
        while True:
            try:
                self.seed()
            except Exception:  # seeding is a courtesy to peers: never let it take the node down
                log.exception("peers: announcing held blobs failed")
            if self.stop_event.wait(SEED_INTERVAL):
                return

    def seed(self) -> None:
        src = self.source
        src.store.sweep(lambda h: (src.cache_blobs / h).exists())
        for use in self.cache.blobs():
            ref = BlobRef(use.digest, use.size)
            if ref.size < src.opts.min_size or src.tables.get(ref) is None:
                continue
            try:
                src.announce(ref, complete=True)
            except PifarmError as e:
                log.warning("peers: %s", e)
                return

    def stop(self) -> None:
        self.server.stop()


def default_options(cfg) -> PeerOptions | None:
    """The default chain's peer source options ([peers]), or None when this node cannot take part."""
    p = cfg.peers
    if not p.enabled or not cfg.node.aggregator_urls:  # S3 only: no tracker
        return None
    why = ""
    try:
        mtls = cfg.node.tls_cert and any(u.startswith("https://") for u in cfg.node.aggregator_urls)
        if not (report_token(cfg.node) or mtls):
            why = ("no report token ([node] report_token_file) and no client certificate for an https:// "
                   "aggregator ([node] tls_cert)")
        else:
            ensure_identity(cfg.node.host_identity or None)
    except ConfigError as e:
        why = str(e)
    if why:
        log.warning("peers off (blobs come from the aggregator alone): %s", why)
        return None
    return p.options()


def attach(daemon) -> NodePeers | None:
    from pifarm.initiator.peer_source import PeerSource

    source = next((getattr(s, "inner", s) for s in daemon.sources if isinstance(getattr(s, "inner", s), PeerSource)),
                  None)
    if source is None:
        return None
    try:
        return _attach(daemon, source)
    except ConfigError as e:
        if daemon.cfg.sources:  # a [[sources]] entry someone wrote: they want to know now
            raise
        source.off = str(e)
        log.warning("peers off (blobs come from the aggregator alone): %s", e)
        return None


def _attach(daemon, source) -> NodePeers:
    from pifarm.initiator.peer_server import PieceServer
    from pifarm.initiator.peer_tls import peer_tls

    c = daemon.cfg
    try:
        source.node_id = ensure_identity(c.node.host_identity or None).hostid
    except ConfigError as e:
        raise ConfigError(f"[[sources]] peers needs the node's id: {e}") from e
    source.token = report_token(c.node)
    tls = peer_tls(source.opts.tls, c.node.tls_ca, c.node.tls_cert, c.node.tls_key)
    # the piece server listens where the node's inference server does (a node kept on loopback
    # stays there), on its own port
    listen = source.opts.listen or f"{c.node.listen.rpartition(':')[0]}:{PIECE_PORT}"
    host, port = parse_listen(listen, key="peers listen")
    try:
        server = PieceServer(source.store, Path(c.cache.root) / "blobs" / "blake3", source.tokens, host, port,
                             upload_rate=source.opts.upload_rate, max_connections=source.opts.max_connections,
                             tls=tls)
    except OSError as e:
        raise ConfigError(f"peers: cannot listen on {listen} (listen): {e.strerror}") from e
    source.port = server.port
    source.tls = source.fetcher.peer_tls = tls
    server.start()
    peers = NodePeers(source, server, daemon.stop_event, daemon.cache)
    peers.thread.start()
    log.warning("node %s serves pieces on %s://%s:%d (upload %s, %d requests at once)", source.node_id,
                "https" if tls else "http", host, server.port,
                f"{source.opts.upload_rate / 1e6:g} MB/s" if source.opts.upload_rate else "unlimited",
                source.opts.max_connections)
    return peers

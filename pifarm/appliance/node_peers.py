"""The node's peer part: the piece server and the credentials of its `peers` source.

`attach(daemon)` finds a `kind = "peers"` source in the chain, gives it the node id and report
token it asks the tracker with, starts the piece server on the source's `listen`, and keeps the
large blobs the cache holds announced as complete (so peers find them after a restart too).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pifarm.appliance.node_report import report_token
from pifarm.errors import ConfigError, PifarmError
from pifarm.initiator.identity import ensure_identity
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


def attach(daemon) -> NodePeers | None:
    from pifarm.initiator.peer_source import PeerSource

    source = next((getattr(s, "inner", s) for s in daemon.sources if isinstance(getattr(s, "inner", s), PeerSource)),
                  None)
    if source is None:
        return None
    from pifarm.initiator.peer_server import PieceServer

    c = daemon.cfg
    try:
        source.node_id = ensure_identity(c.node.host_identity or None).hostid
    except ConfigError as e:
        raise ConfigError(f"[[sources]] peers needs the node's id: {e}") from e
    source.token = report_token(c.node)
    host, port = parse_listen(source.opts.listen, key="peers listen")
    try:
        server = PieceServer(source.store, Path(c.cache.root) / "blobs" / "blake3", source.tokens, host, port,
                             upload_rate=source.opts.upload_rate, max_connections=source.opts.max_connections)
    except OSError as e:
        raise ConfigError(f"[[sources]] peers: cannot listen on {source.opts.listen}: {e.strerror}") from e
    source.port = server.port
    server.start()
    peers = NodePeers(source, server, daemon.stop_event, daemon.cache)
    peers.thread.start()
    log.warning("node %s serves pieces on %s:%d (upload %s, %d requests at once)", source.node_id, host, server.port,
                f"{source.opts.upload_rate / 1e6:g} MB/s" if source.opts.upload_rate else "unlimited",
                source.opts.max_connections)
    return peers

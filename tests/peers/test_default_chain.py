"""The default chain (no `[[sources]]`): peers first for large blobs another node has, the
aggregator otherwise; off, cleanly, for a node that cannot take part (issue 16). In-process node
daemons against a real aggregator on loopback."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from pifarm.appliance.config import NodeConfig, PeerConfig, load_node_config
from pifarm.appliance.node import NodeDaemon
from pifarm.appliance.node_peers import default_options
from pifarm.cache.settings import CacheSettings
from pifarm.initiator.chain import default_specs
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.settings import NodeSettings, SourceSpec, WatcherSettings
from pifarm.pki.farm import AggregatorPki
from pifarm.registry.fleet_api import load_token_key, node_token

MiB = 2**20


def node_cfg(tmp: Path, name: str, agg, *, token: bool = True, peers: PeerConfig | None = None,
             sources: tuple = (), pki: AggregatorPki | None = None) -> NodeConfig:
    ident = tmp / name / "id"
    hostid = ensure_identity(ident).hostid
    tok = node_token(load_token_key(agg.data_dir), hostid) if token else ""
    tls = {}
    if pki is not None:  # the farm's PKI: this node's client certificate (the aggregator stays HTTP here)
        t = pki.issue_client(name, tmp / name / "tls")
        tls = {"tls_ca": str(t.bundle), "tls_cert": str(t.cert), "tls_key": str(t.key)}
    return NodeConfig(
        node=NodeSettings(aggregator=agg.url, listen="127.0.0.1:0", trusted_keys=[str(agg.pubkey)],
                          state_dir=str(tmp / name / "state"), host_identity=str(ident), report_token=tok, **tls),
        cache=CacheSettings(root=str(tmp / name / "cache"), scrub_interval=0),
        watcher=WatcherSettings(poll_wait=1, backoff_base=0.05, backoff_max=0.5),
        peers=peers or PeerConfig(listen="127.0.0.1:0", min_size=MiB), sources=sources)


def peer_urls(agg, asker: NodeDaemon) -> list[str]:
    """The piece URLs the tracker hands `asker` for the blobs it holds."""
    src = asker.sources[0].inner
    params = {"port": src.port, **({"tls": "true"} if src.tls is not None else {})}
    return [p["url"] for digest in src.tokens for p in
            httpx.get(agg.url + "/v1/peers", params={"blob": digest, **params}, headers=src._auth(),
                      timeout=10).json()["peers"]]


def kinds(daemon: NodeDaemon) -> list[str]:
    return [getattr(s, "inner", s).name for s in daemon.sources]


def wait_for(cond, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_default_order_and_who_takes_part(tmp_path, caplog):
    cfg = load_node_config(None, environ={"PIFARM_NODE_AGGREGATOR": "http://agg:8470", "PIFARM_NODE_REPORT_TOKEN": "t",
                                          "PIFARM_NODE_HOST_IDENTITY": str(tmp_path / "id")})
    opts = default_options(cfg)
    assert opts is not None and opts.need_peer and opts.min_size == 16 * MiB and not opts.listen
    assert opts.upload_rate == 12.5e6  # served to peers at most: bench S2 measured inference unharmed
    assert [s.kind for s in default_specs("http://agg:8470", "s3://b/p", opts)] == ["peers", "http", "s3"]
    assert [s.kind for s in default_specs("", "s3://b/p", opts)] == ["s3"]  # no aggregator: no tracker
    off = load_node_config(None, environ={"PIFARM_NODE_AGGREGATOR": "http://agg:8470", "PIFARM_NODE_REPORT_TOKEN": "t",
                                          "PIFARM_PEERS_ENABLED": "false"})
    assert default_options(off) is None
    with caplog.at_level(logging.WARNING):
        anon = load_node_config(None, environ={"PIFARM_NODE_AGGREGATOR": "http://agg:8470"})
        assert default_options(anon) is None  # neither report token nor client certificate: the old chain
    assert "peers off" in caplog.text and "report token" in caplog.text
    with_cert = load_node_config(None, environ={"PIFARM_NODE_AGGREGATOR": "https://agg:8470",
                                                "PIFARM_NODE_TLS_CERT": "/x/node.crt", "PIFARM_NODE_TLS_KEY": "/x/node.key",
                                                "PIFARM_NODE_HOST_IDENTITY": str(tmp_path / "id")})
    assert default_options(with_cert) is not None  # mTLS: the certificate names the node to the tracker
    cert_plain_agg = load_node_config(None, environ={"PIFARM_NODE_AGGREGATOR": "http://agg:8470",
                                                     "PIFARM_NODE_TLS_CERT": "/x/node.crt",
                                                     "PIFARM_NODE_TLS_KEY": "/x/node.key"})
    assert default_options(cert_plain_agg) is None  # a certificate is never shown to a plain-HTTP tracker


def test_node_without_credentials_or_port_keeps_the_old_chain(tmp_path, aggregator, caplog):
    daemons = []
    try:
        plain = NodeDaemon(node_cfg(tmp_path, "plain", aggregator, token=False))
        daemons.append(plain)
        plain.start()
        assert kinds(plain) == ["http"] and plain.peers is None
        explicit = NodeDaemon(node_cfg(tmp_path, "explicit", aggregator,
                                       sources=(SourceSpec("http", deadline=60.0),)))
        daemons.append(explicit)
        explicit.start()
        assert kinds(explicit) == ["http"] and explicit.peers is None  # the configured order wins
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING):
            busy = NodeDaemon(node_cfg(tmp_path, "busy", aggregator,
                                       peers=PeerConfig(listen=f"127.0.0.1:{port}", min_size=MiB)))
            daemons.append(busy)
            busy.start()  # the default chain's piece server cannot bind: peers off, the node runs
        taken.close()
        assert busy.peers is None and kinds(busy) == ["peers", "http"]
        assert "peers off" in caplog.text and f"127.0.0.1:{port}" in caplog.text
        assert "cannot listen" in busy.sources[0].inner.off
    finally:
        for d in daemons:
            d.stop()


@pytest.mark.parametrize("auth", ["token", "mtls"])
def test_peers_first_only_when_another_node_has_the_blob(tmp_path, aggregator, auth):
    """Node A is alone: its peer source passes the blob on (no failure) and HTTP brings it. Node B
    then finds A in the swarm and takes every piece from A's piece server (over HTTPS with both
    nodes' certificates when the farm has PKI)."""
    pki = None
    if auth == "mtls":
        pki = AggregatorPki(tmp_path / "pki")
        pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    src = tmp_path / "model.bin"
    data = os.urandom(3 * MiB + 12345)  # 4 pieces of 1 MiB
    src.write_bytes(data)
    aggregator.client().publish(src, "big", "stable", format="raw")
    a = NodeDaemon(node_cfg(tmp_path, "a", aggregator, pki=pki))
    b = None
    try:
        a.start()
        assert kinds(a) == ["peers", "http"] and a.peers is not None
        installed = a.metrics.blobs_installed
        wait_for(lambda: installed.labels("http")._value.get() >= 1, "node A's blob over HTTP")
        assert installed.labels("peers")._value.get() == 0
        assert a.metrics.source_failures.labels("peers")._value.get() == 0  # passed on, not failed
        a.peers.seed()  # what its seed loop does every 30 s: announce the blobs it holds as complete
        b = NodeDaemon(node_cfg(tmp_path, "b", aggregator, pki=pki))
        b.start()
        wait_for(lambda: b.metrics.blobs_installed.labels("peers")._value.get() >= 1, "node B's blob from peers")
        stats = json.loads((tmp_path / "b" / "state" / "peers.json").read_text())
        assert stats["pieces_from_peers"] == 4 and stats["pieces_from_aggregator"] == 0, stats
        assert a.peers.server.served_bytes >= len(data)
        assert (a.peers.server.tls is not None) == (auth == "mtls")
        assert all(p.startswith("https://" if pki else "http://") for p in peer_urls(aggregator, b))
    finally:
        for d in (b, a):
            if d is not None:
                d.stop()


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))

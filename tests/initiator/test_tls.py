"""The node talks to an https:// aggregator with its CA and, for mTLS, its client certificate."""

from __future__ import annotations

import ssl

import pytest

from pifarm.appliance.config import NodeConfig, load_node_config
from pifarm.pki.farm import AggregatorPki, NodeTls
from pifarm.cache.nodestate import read_state
from pifarm.cache.store import Cache
from pifarm.errors import ConfigError
from pifarm.client.http import AggregatorClient
from pifarm.client.tls import tls_context
from pifarm.initiator.http_source import HttpSource
from pifarm.initiator.settings import WatcherSettings
from pifarm.initiator.watcher import Watcher
from pifarm.signed.integrity import digest_bytes
from pifarm.signed.signing import SigningKey, TrustedKeys
from tests.cache.helpers import manifest_doc, snapshot_doc
from tests.initiator.docserver import DocServer


@pytest.fixture
def mtls_server(tmp_path):
    pki = AggregatorPki(tmp_path / "agg")
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.bundle))
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    key = SigningKey.generate()
    m = manifest_doc(key, "tls", 1, {"f": b"secret-model" * 100})
    srv = DocServer(tls=server_ctx)
    srv.manifests[("tls", 1)] = m
    srv.blobs[digest_bytes(b"secret-model" * 100)] = b"secret-model" * 100
    srv.snapshot = snapshot_doc(key, 1, {"tls": {"stable": m}})
    yield srv, pki, NodeTls(pki.admin_dir), key
    srv.stop()


def _watcher(tmp_path, srv, key, tls) -> tuple[Watcher, Cache]:
    cache = Cache(tmp_path / "cache")
    w = Watcher(cache=cache, sources=[HttpSource(srv.url, tls=tls)], trusted=TrustedKeys([key.public]),
                state_dir=tmp_path / "state", aggregator=AggregatorClient(srv.url, tls=tls),
                settings=WatcherSettings(poll_wait=1))
    return w, cache


def test_mtls_pull_with_client_certificate(tmp_path, mtls_server):
    srv, pki, client, key = mtls_server
    tls = tls_context(str(pki.bundle), str(client.cert), str(client.key))
    w, cache = _watcher(tmp_path, srv, key, tls)
    w.cycle()
    assert cache.layout.read_ref("tls", "active").version == 1


def test_mtls_without_client_certificate_is_refused(tmp_path, mtls_server):
    srv, pki, _client, key = mtls_server
    w, cache = _watcher(tmp_path, srv, key, tls_context(str(pki.bundle)))
    w.cycle()
    assert cache.layout.read_ref("tls", "active") is None
    assert read_state(tmp_path / "state").paths["http"] == "unreachable"


def test_tls_settings_errors(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\ntls_cert = "/x/node.crt"\n')
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_node_config(cfg, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        tls_context(str(tmp_path / "missing-ca.pem"))
    assert tls_context() is None and NodeConfig().node.tls_ca == ""

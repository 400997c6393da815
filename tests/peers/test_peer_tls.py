"""mTLS between nodes (issue 16): the piece server under the farm's PKI serves enrolled nodes only,
and the asking node checks the server's certificate too. Real certificates from pifarm.pki, on
loopback, in-process."""

from __future__ import annotations

import os
import ssl

import httpx
import pytest

from pifarm.errors import ConfigError, SourceError
from pifarm.initiator.peer_server import PieceServer
from pifarm.initiator.peer_source import Fetcher
from pifarm.initiator.peer_store import PieceStore
from pifarm.initiator.peer_tls import PeerTls, peer_tls
from pifarm.pki.farm import AggregatorPki
from pifarm.signed.integrity import BlobRef
from pifarm.signed.pieces import hash_file

P = 64 * 1024


def creds(tmp_path, farm: str, name: str):
    pki = AggregatorPki(tmp_path / farm)
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    t = pki.issue_client(name, tmp_path / farm / "nodes" / name)
    return str(t.bundle), str(t.cert), str(t.key)


def fetcher(tls: PeerTls) -> Fetcher:
    f = Fetcher(None, timeout=10)
    f.peer_tls = tls
    return f


@pytest.fixture
def served(tmp_path):
    data = os.urandom(2 * P + 7)
    (tmp_path / "b").write_bytes(data)
    digest, size, table = hash_file(tmp_path / "b", P)
    store = PieceStore(tmp_path / "pieces")
    store.acquire(BlobRef(digest, size), table).put(1, data[P:2 * P])
    return store, digest, data


def test_piece_server_under_mtls_serves_enrolled_nodes_only(tmp_path, served):
    store, digest, data = served
    a, b = creds(tmp_path, "farm", "node-a"), creds(tmp_path, "farm", "node-b")
    stranger = creds(tmp_path, "other-farm", "stranger")
    srv = PieceServer(store, tmp_path / "blobs", {digest: "secret"}, "127.0.0.1", 0, tls=PeerTls(*a)).start()
    url = f"https://127.0.0.1:{srv.port}/v1/pieces/{digest.split(':')[1]}"
    ok = {"Authorization": "Bearer secret"}
    try:
        # an enrolled node: its certificate presented, the server's checked against the farm CA
        r = fetcher(PeerTls(*b)).get(f"{url}/1?size={P}", ok, 2 * P, peer=True)
        assert r.status_code == 200 and r.content == data[P:2 * P]
        # the swarm token is still required (it carries the tracker's refusal of revoked nodes)
        assert fetcher(PeerTls(*b)).get(f"{url}/1?size={P}", {}, 2 * P, peer=True).status_code == 403
        # no client certificate: a clear refusal, not a bare handshake alert
        anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anon.check_hostname, anon.verify_mode = False, ssl.CERT_NONE
        r = httpx.get(f"{url}/1?size={P}", headers=ok, verify=anon, timeout=10)
        assert r.status_code == 403 and "enrolled nodes only" in r.json()["error"]
        # a certificate from another farm's CA: refused in the handshake
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        other.check_hostname, other.verify_mode = False, ssl.CERT_NONE
        other.load_cert_chain(stranger[1], stranger[2])
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/1?size={P}", headers=ok, verify=other, timeout=10)
        # ... and that node refuses this server before its request (and token) leaves
        with pytest.raises(SourceError, match="not an enrolled node"):
            fetcher(PeerTls(*stranger)).get(f"{url}/1?size={P}", ok, 2 * P, peer=True)
        # plain HTTP to an mTLS piece server gets nothing
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{srv.port}/v1/pieces/{digest.split(':')[1]}", headers=ok, timeout=10)
    finally:
        srv.stop()


def test_tls_mode_follows_the_node_files(tmp_path):
    a = creds(tmp_path, "farm", "node-a")
    assert isinstance(peer_tls("auto", *a), PeerTls)
    assert peer_tls("auto", "", "", "") is None  # no PKI on this node: the swarm token over HTTP
    assert peer_tls("off", *a) is None
    with pytest.raises(ConfigError, match="tls_ca, tls_cert and tls_key"):
        peer_tls("on", "", a[1], a[2])
    with pytest.raises(ConfigError, match="does not exist"):
        peer_tls("auto", a[0], str(tmp_path / "gone.crt"), a[2])

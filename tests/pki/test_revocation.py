"""Issue 11, finding 4: renewal only for certificates on record, a revocation list the mTLS
server checks (without a restart), and an admin certificate that does not live ten years."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time

import httpx
import pytest
import uvicorn

from pifarm.pki import certs as x, revocation
from pifarm.pki.farm import ADMIN_DAYS, NodeTls, make_csr
from pifarm.pki.tokens import TokenStore

NQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"


def renew(farm, cert_pem: str, key):
    new_key = x.new_key()
    csr = make_csr(new_key, "pi1")
    proof = base64.b64encode(x.sign_proof(key, csr.encode())).decode()
    return farm.client.post("/v1/enroll/renew", json={"certificate": cert_pem, "csr": csr, "proof": proof}), new_key


def test_renewal_only_for_a_certificate_on_record(farm):
    r, key = farm.enroll(TokenStore(farm.data).create(60)[0], hostnqn=NQN)
    cert = r.json()["certificate"]
    ok, key2 = renew(farm, cert, key)
    assert ok.status_code == 200, ok.text
    again, _ = renew(farm, cert, key)  # the old certificate was renewed already: its successor is on record
    assert again.status_code == 403 and "not on record" in again.json()["detail"]
    revocation.revoke(farm.data, NQN)  # the host is removed: its current certificate renews no more
    gone, _ = renew(farm, ok.json()["certificate"], key2)
    assert gone.status_code == 403


def test_a_certificate_never_enrolled_does_not_renew(farm, tmp_path):
    stray = farm.pki.issue_client("stray", tmp_path / "stray")
    r, _ = renew(farm, stray.cert.read_text(), x.read_key(stray.key))
    assert r.status_code == 403


def test_admin_certificate_lifetime_is_short():
    from pifarm.pki.farm import CA_DAYS

    assert ADMIN_DAYS <= 90 < CA_DAYS


def test_init_issues_a_short_lived_admin_certificate_and_renews_it(farm):
    admin = NodeTls(farm.pki.admin_dir)
    cert = x.read_cert(admin.cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= ADMIN_DAYS
    farm.pki.issue_client("admin", farm.pki.admin_dir, days=10)  # as if it were about to expire
    farm.pki.init()
    assert (x.read_cert(admin.cert).not_valid_after_utc - x.utcnow()).days > 80


@pytest.fixture
def mtls_server(farm):
    """uvicorn with client certificates required and the farm's CRL checking installed."""
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = farm.pki
    cfg = uvicorn.Config(app, host="127.0.0.1", port=port, ssl_certfile=str(p.server_cert),
                         ssl_keyfile=str(p.server_key), ssl_ca_certs=str(p.bundle), ssl_cert_reqs=ssl.CERT_REQUIRED,
                         log_level="warning", lifespan="off")
    cfg.load()
    assert revocation.install(cfg.ssl, farm.data, certfile=str(p.server_cert), keyfile=str(p.server_key),
                              client_ca=str(p.bundle)) is not None
    server = uvicorn.Server(cfg)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    yield f"https://127.0.0.1:{port}/"
    server.should_exit = True
    t.join(10)


def _get(url: str, tls: NodeTls):
    try:
        return httpx.get(url, verify=tls.ssl_context(), timeout=20).status_code
    except (httpx.TransportError, ssl.SSLError):
        return "refused"


def test_the_mtls_server_refuses_a_revoked_certificate_without_a_restart(farm, mtls_server, tmp_path):
    a = farm.pki.issue_client("a", tmp_path / "a")
    b = farm.pki.issue_client("b", tmp_path / "b")
    assert _get(mtls_server, a) == 200 and _get(mtls_server, b) == 200
    revocation.add_serial(farm.data, format(x.read_cert(a.cert).serial_number, "x"), hostnqn=NQN)
    assert _get(mtls_server, a) == "refused"
    assert _get(mtls_server, b) == 200


def test_crls_follow_a_ca_rotation(farm, tmp_path):
    farm.pki.rotate()
    crls = revocation.load_crls(farm.data / "pki" / "crl.pem")
    assert len(crls) == 2  # the new CA and the previous one both vouch for their revocations
    assert revocation.crl_covers(farm.data, farm.pki.bundle)
    farm.pki.finish(force=True)
    assert len(revocation.load_crls(farm.data / "pki" / "crl.pem")) == 1

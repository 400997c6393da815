"""The farm PKI: CA + server certificate, client certificates, enrollment and renewal over a real
TLS listener, and CA rotation that lets nodes move over one at a time."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import stat
import ssl

import pytest
from cryptography import x509

from pifarm.pki.farm import AggregatorPki, NodeTls, enroll_node, renew_node
from pifarm.errors import Conflict, IntegrityError, PifarmError, UsageError
from pifarm.pki import certs as x
from tests.support.procs import free_port, start_pifarm

NQN = "nqn.2014-08.org.nvmexpress:uuid:6b1c1a3e-6a45-4a5e-9a55-7b8b1f0c2d11"
HOSTID = "6b1c1a3e-6a45-4a5e-9a55-7b8b1f0c2d11"


def _pki(tmp_path):
    p = AggregatorPki(tmp_path / "agg")
    p.init(dns_names=["localhost"], ips=["127.0.0.1"])
    return p


def test_init_creates_private_keys_0600_and_is_idempotent(tmp_path):
    p = AggregatorPki(tmp_path / "agg")
    made = p.init(dns_names=["localhost"], ips=["127.0.0.1"])
    assert made
    for key in (p.path("ca.key"), p.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = {f: f.read_bytes() for f in p.dir.rglob("*") if f.is_file()}
    assert p.init() == []
    assert {f: f.read_bytes() for f in p.dir.rglob("*") if f.is_file()} == before
    assert stat.S_IMODE((p.admin_dir / "node.key").stat().st_mode) == 0o600


def test_server_certificate_chains_to_the_ca_and_names_loopback(tmp_path):
    p = _pki(tmp_path)
    ca, srv = x.read_cert(p.path("ca.crt")), x.read_cert(p.server_cert)
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_client_certificate_checks(tmp_path):
    p = _pki(tmp_path)
    tls = p.issue_client("pi1", tmp_path / "pi1")
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    bundle = x.bundle_certs(p.dir)
    x.check_client_cert(x.read_cert(tls.cert), bundle)
    old = p.issue_client("pi2", tmp_path / "pi2", days=1,
                         not_before=x.utcnow() - dt.timedelta(days=3))
    with pytest.raises(IntegrityError, match="not valid now"):
        x.check_client_cert(x.read_cert(old.cert), bundle)
    other = _pki(tmp_path / "other").issue_client("pi3", tmp_path / "pi3")
    with pytest.raises(IntegrityError, match="not issued by a CA"):
        x.check_client_cert(x.read_cert(other.cert), bundle)
    with pytest.raises(UsageError):
        p.issue_client("../evil", tmp_path / "e")


def test_rotation_keeps_old_certificates_working_until_finish(tmp_path):
    p = _pki(tmp_path)
    old_client = x.read_cert(p.issue_client("pi1", tmp_path / "pi1").cert)
    old_server = p.server_cert.read_bytes()
    new_fp, old_fp = p.rotate()
    assert new_fp != old_fp and p.phase() == "staged"
    bundle = x.bundle_certs(p.dir)
    assert {x.fingerprint(c) for c in bundle} == {new_fp, old_fp}
    assert p.server_cert.read_bytes() == old_server  # nodes only trust the old CA yet
    x.check_client_cert(old_client, bundle)          # old client certificates still accepted
    new_client = x.read_cert(p.issue_client("pi9", tmp_path / "pi9").cert)
    x.check_client_cert(new_client, bundle)
    with pytest.raises(Conflict, match="already staged"):
        p.rotate()
    p.finish()
    assert p.phase() == "idle"
    bundle = x.bundle_certs(p.dir)
    assert [x.fingerprint(c) for c in bundle] == [new_fp]
    x.read_cert(p.server_cert).verify_directly_issued_by(bundle[0])
    with pytest.raises(IntegrityError):
        x.check_client_cert(old_client, bundle)
    assert not p.path("previous-ca.key").exists()
    with pytest.raises(Conflict, match="no CA rotation"):
        p.finish()


@pytest.fixture
def enroll_server(tmp_path):
    data = tmp_path / "agg"
    p = _pki(tmp_path)
    (data / "enroll-secret").write_text("s3cret-enroll\n")
    (data / "keys").mkdir()
    (data / "keys" / "signing.pub").write_text("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAx\n-----END PUBLIC KEY-----\n")
    port = free_port()
    ctx = ssl.create_default_context(cafile=str(p.bundle))
    proc = start_pifarm(["pki", "serve-enroll", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
                 tmp_path / "enroll.log", f"https://127.0.0.1:{port}/v1/enroll/ca", verify=ctx)
    yield f"https://127.0.0.1:{port}", p
    proc.stop()


def test_enrollment_issues_a_certificate_and_registers_the_host(tmp_path, enroll_server):
    url, p = enroll_server
    ca_hash = x.fingerprint(x.read_cert(p.path("ca.crt")))
    resp = enroll_node(url, "s3cret-enroll", hostnqn=NQN, hostid=HOSTID, hostname="pi1",
                       tls_dir=tmp_path / "tls", ca_hash=ca_hash)
    tls = NodeTls(tmp_path / "tls")
    assert tls.exists() and stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    cert = x.read_cert(tls.cert)
    x.check_client_cert(cert, x.bundle_certs(p.dir))
    assert resp["signing_keys"] and "BEGIN PUBLIC KEY" in resp["signing_keys"][0]
    hosts = x.read_hosts(p.data_dir)
    assert [h.hostnqn for h in hosts] == [NQN]
    assert hosts[0].cert_serial == format(cert.serial_number, "x")


def test_enrollment_refuses_a_wrong_secret_and_writes_nothing(tmp_path, enroll_server):
    url, p = enroll_server
    with pytest.raises(IntegrityError, match="token is unknown"):
        enroll_node(url, "guess", hostnqn=NQN, hostid=HOSTID, hostname="pi1", tls_dir=tmp_path / "tls",
                    trust_on_first_use=True)
    assert not (tmp_path / "tls" / "node.crt").exists()
    assert x.read_hosts(p.data_dir) == []


def test_enrollment_refuses_a_ca_that_does_not_match_the_pin(tmp_path, enroll_server):
    url, _ = enroll_server
    with pytest.raises(IntegrityError, match="does not match --ca-hash"):
        enroll_node(url, "s3cret-enroll", hostnqn=NQN, hostid=HOSTID, hostname="pi1", tls_dir=tmp_path / "tls",
                    ca_hash="sha256:" + "0" * 64)
    assert not (tmp_path / "tls").exists()


def test_enrollment_rejects_a_malformed_host_nqn(tmp_path, enroll_server):
    url, _ = enroll_server
    with pytest.raises(PifarmError, match="400.*NQN"):
        enroll_node(url, "s3cret-enroll", hostnqn="not-an-nqn", hostid=HOSTID, hostname="pi1", tls_dir=tmp_path / "tls",
                    trust_on_first_use=True)


def test_enrollment_needs_https(tmp_path):
    with pytest.raises(UsageError, match="https"):
        enroll_node("http://127.0.0.1:1", "s", hostnqn=NQN, hostid=HOSTID, hostname="pi1", tls_dir=tmp_path / "t")


def test_renewal_during_rotation_moves_a_node_to_the_new_ca(tmp_path, enroll_server):
    url, p = enroll_server
    enroll_node(url, "s3cret-enroll", hostnqn=NQN, hostid=HOSTID, hostname="pi1", tls_dir=tmp_path / "tls",
                trust_on_first_use=True)
    p.rotate()
    with pytest.raises(Conflict, match="still hold a certificate from the old CA"):
        p.finish()
    renew_node(url, tmp_path / "tls")
    tls = NodeTls(tmp_path / "tls")
    new_ca = x.read_cert(p.path("ca.crt"))
    x.read_cert(tls.cert).verify_directly_issued_by(new_ca)
    assert len(x.load_certs(tls.bundle.read_bytes(), "bundle")) == 2  # trusts the server's old-CA cert still
    p.finish()  # no stragglers left
    rec = json.loads((p.data_dir / "hosts" / f"{NQN}.json").read_text())
    assert rec["ca_fingerprint"] == x.fingerprint(new_ca)


def test_renewal_refuses_a_certificate_from_another_ca(tmp_path, enroll_server):
    url, _ = enroll_server
    stranger = _pki(tmp_path / "stranger").issue_client("pi1", tmp_path / "tls")
    # the stranger's bundle does not verify our server, so point it at ours but keep its own cert
    ours = x.read_cert(enroll_server[1].path("ca.crt"))
    stranger.bundle.write_bytes(x.pem(ours))
    with pytest.raises(IntegrityError, match="not issued by a CA"):
        renew_node(url, tmp_path / "tls")

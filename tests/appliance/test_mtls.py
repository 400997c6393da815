"""mTLS against the REAL aggregator (`pifarm aggregator run` with [api] tls_cert, tls_key,
tls_client_ca) on loopback: refusals at the TLS layer, enrollment through its enrollment
listener, and a CA rotation carried out while the nodes keep being served."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from pifarm.pki.farm import AggregatorPki, NodeTls, renew_node
from pifarm.pki import certs as x
from tests.support.procs import free_port, run_cli
from tests.support.aggregator import AggregatorProc



def _ctx(tls: NodeTls | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if tls is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def _start_farm(tmp_path: Path, enroll_extra: str = "") -> AggregatorProc:
    data = tmp_path / "agg"
    pki = AggregatorPki(data)
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    port, eport = free_port(), free_port()
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f"""
[registry]
data_dir = "{data}"
[api]
tls_cert = "{pki.server_cert}"
tls_key = "{pki.server_key}"
tls_client_ca = "{pki.bundle}"
[enroll]
listen = "127.0.0.1:{eport}"
{enroll_extra}
""")
    admin = pki.issue_client("admin", tmp_path / "admin")
    agg = AggregatorProc(data, port, config=cfg, scheme="https")
    agg.start(verify=_ctx(admin, pki.bundle))
    agg.enroll_url = f"https://127.0.0.1:{eport}"
    agg.pki, agg.admin = pki, admin
    return agg


@pytest.fixture
def farm(tmp_path):
    agg = _start_farm(tmp_path)
    yield agg
    agg.stop()


def _refused(url: str, ctx: ssl.SSLContext) -> str:
    """The request must fail in the TLS layer: no HTTP response at all."""
    with pytest.raises((httpx.TransportError, ssl.SSLError)) as e:
        httpx.get(url + "/health", verify=ctx, timeout=5)
    return str(e.value)


def test_good_client_certificate_is_served(farm):
    r = httpx.get(farm.url + "/v1/metadata?since=-1&wait=0", verify=_ctx(farm.admin, farm.pki.bundle), timeout=10)
    assert r.status_code == 200
    assert r.json()["signed"]["type"] == "snapshot"


def test_no_client_certificate_is_refused(farm):
    _refused(farm.url, _ctx(None, farm.pki.bundle))


def test_certificate_from_another_ca_is_refused(farm, tmp_path):
    stranger = AggregatorPki(tmp_path / "stranger")
    stranger.init(dns_names=["localhost"], ips=["127.0.0.1"])
    _refused(farm.url, _ctx(stranger.issue_client("pi1", tmp_path / "s"), farm.pki.bundle))


def test_expired_certificate_is_refused(farm, tmp_path):
    old = farm.pki.issue_client("pi1", tmp_path / "old", days=1, not_before=x.utcnow() - dt.timedelta(days=3))
    _refused(farm.url, _ctx(old, farm.pki.bundle))


def test_plain_http_gets_no_api(farm):
    with pytest.raises(httpx.TransportError):
        httpx.get(farm.url.replace("https://", "http://") + "/health", timeout=5)


def _setup_node(tmp_path: Path, farm, name: str, *extra: str):
    root = tmp_path / name
    ca_hash = x.fingerprint(x.read_cert(farm.pki.path("ca.crt")))
    token = tmp_path / f"{name}.token"  # one-time token, handed over in a file (never argv)
    assert run_cli(["enroll", "token", "create", "--data-dir", str(farm.data_dir), "--ttl", "10m",
                    "--out", str(token)]).returncode == 0
    r = run_cli(["setup", "node", "--root", str(root), "--aggregator", farm.url, "--enroll-url", farm.enroll_url,
                 "--enroll-file", str(token), "--ca-hash", ca_hash, "--hostname", name, "--no-start", *extra])
    return root, r


def test_setup_node_enrolls_through_the_aggregator_and_is_then_served(farm, tmp_path):
    root, r = _setup_node(tmp_path, farm, "pi1")
    assert r.returncode == 0, r.stdout + r.stderr
    tls = NodeTls(root / "etc/pifarm/tls")
    assert httpx.get(farm.url + "/health", verify=tls.ssl_context(), timeout=10).status_code == 200
    nqn = (root / "etc/nvme/hostnqn").read_text().strip()
    # the host registration: the target's allow list now holds this node's NQN
    allowed = json.loads((farm.data_dir / "target" / "hosts.json").read_text())
    assert nqn in allowed
    assert (root / "etc/pifarm/signing.pub").read_bytes() == farm.pubkey.read_bytes()
    # the node config it wrote is one the node daemon accepts, with the NVMe/TCP volumes first
    from pifarm.appliance.config import load_node_config

    cfg = load_node_config(root / "etc/pifarm/node.toml", environ={})
    assert cfg.node.aggregator == farm.url and cfg.node.trusted_keys == ["/etc/pifarm/signing.pub"]
    assert [s.kind for s in cfg.sources] == ["nvme-tcp-userspace", "http"]
    assert cfg.sources[0].address == "127.0.0.1:4420"


def test_setup_node_with_a_wrong_secret_fails_cleanly(farm, tmp_path):
    root = tmp_path / "pi2"
    ca_hash = x.fingerprint(x.read_cert(farm.pki.path("ca.crt")))
    r = run_cli(["setup", "node", "--root", str(root), "--aggregator", farm.url, "--enroll-url", farm.enroll_url,
                 "--ca-hash", ca_hash, "--no-start"], env={"PIFARM_ENROLL_TOKEN": "pfe1_not-a-token"})
    assert r.returncode == 1
    assert "token is unknown" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (root / "etc/pifarm/tls/node.crt").exists()


def test_ca_rotation_without_restarting_the_fleet_at_once(farm, tmp_path):
    root_a, r = _setup_node(tmp_path, farm, "pia")
    assert r.returncode == 0, r.stderr
    root_b, r = _setup_node(tmp_path, farm, "pib")
    assert r.returncode == 0, r.stderr
    a, b = NodeTls(root_a / "etc/pifarm/tls"), NodeTls(root_b / "etc/pifarm/tls")

    assert run_cli(["pki", "rotate", "--data-dir", str(farm.data_dir)]).returncode == 0
    farm.stop()
    farm.start(verify=b.ssl_context())  # the aggregator restarts once; the nodes do not
    # both nodes, still on old-CA certificates and old bundles, keep being served
    for n in (a, b):
        assert httpx.get(farm.url + "/health", verify=n.ssl_context(), timeout=10).status_code == 200
    # node A moves over (new certificate, two-CA bundle); B has not yet
    renew_node(farm.enroll_url, a.dir)
    assert httpx.get(farm.url + "/health", verify=a.ssl_context(), timeout=10).status_code == 200
    r = run_cli(["pki", "rotate", "--finish", "--data-dir", str(farm.data_dir)])
    assert r.returncode == 1 and "pib" in r.stderr  # refused: B still holds an old-CA certificate
    renew_node(farm.enroll_url, b.dir)
    assert run_cli(["pki", "rotate", "--finish", "--data-dir", str(farm.data_dir)]).returncode == 0
    farm.stop()
    farm.start(verify=a.ssl_context())
    for n in (a, b):  # renewed nodes verify the new server certificate with the bundle they hold
        assert httpx.get(farm.url + "/health", verify=n.ssl_context(), timeout=10).status_code == 200
    _refused(farm.url, _ctx(farm.admin, farm.pki.bundle))  # the admin cert was never renewed: old CA


def test_doctor_on_the_aggregator_reaches_its_own_mtls_api(farm, tmp_path):
    from pifarm.appliance import doctor

    env = doctor.Env(role="aggregator", config={"registry": {"data_dir": str(farm.data_dir)},
                                                "api": {"listen": f"0.0.0.0:{farm.port}",
                                                        "tls_cert": str(farm.pki.server_cert),
                                                        "tls_key": str(farm.pki.server_key),
                                                        "tls_client_ca": str(farm.pki.bundle)}})
    (agg,) = [r for r in doctor.check_aggregator(env) if r.check == "aggregator"]
    assert agg.status == "pass", agg.detail
    (cert,) = doctor.check_certificates(env)
    assert cert.status == "pass"


def test_enrollment_issues_a_dhchap_secret_when_auth_is_on(tmp_path):
    agg = _start_farm(tmp_path, "dhchap = true")
    try:
        root, r = _setup_node(tmp_path, agg, "pi1")
        assert r.returncode == 0, r.stdout + r.stderr
        nqn = (root / "etc/nvme/hostnqn").read_text().strip()
        key = (root / "etc/nvme/dhchap-key").read_text().strip()
        assert key.startswith("DHHC-1:") and stat.S_IMODE((root / "etc/nvme/dhchap-key").stat().st_mode) == 0o600
        allowed = json.loads((agg.data_dir / "target" / "hosts.json").read_text())
        assert allowed[nqn]["dhchap_key"] == key  # the target requires exactly what the node holds
        # a renewal keeps the host's secret: only the certificate changes
        renew_node(agg.enroll_url, root / "etc/pifarm/tls")
        assert json.loads((agg.data_dir / "target" / "hosts.json").read_text())[nqn]["dhchap_key"] == key
    finally:
        agg.stop()


def test_a_revoked_node_is_refused_by_the_running_aggregator(farm, tmp_path):
    """Issue 11, finding 4: `pifarm enroll revoke` puts the certificate on the CRL the mTLS server
    checks (no restart), the node cannot renew its way back, and other nodes keep being served."""
    root_a, r = _setup_node(tmp_path, farm, "pia")
    assert r.returncode == 0, r.stderr
    root_b, r = _setup_node(tmp_path, farm, "pib")
    assert r.returncode == 0, r.stderr
    a, b = NodeTls(root_a / "etc/pifarm/tls"), NodeTls(root_b / "etc/pifarm/tls")
    assert httpx.get(farm.url + "/health", verify=a.ssl_context(), timeout=10).status_code == 200
    nqn = (root_a / "etc/nvme/hostnqn").read_text().strip()
    r = run_cli(["enroll", "revoke", nqn, "--data-dir", str(farm.data_dir)])
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    _refused(farm.url, a.ssl_context())
    assert httpx.get(farm.url + "/health", verify=b.ssl_context(), timeout=10).status_code == 200
    with pytest.raises(Exception, match="not on record|403"):
        renew_node(farm.enroll_url, a.dir)
    assert nqn not in json.loads((farm.data_dir / "target" / "hosts.json").read_text())

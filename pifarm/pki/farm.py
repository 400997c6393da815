"""The farm's private PKI: one CA on the aggregator, its server certificate, node client
certificates, and CA rotation that never needs the whole fleet restarted at once.

Aggregator files (`<data_dir>/pki/`):

    ca.crt, ca.key              the current CA (key 0600)
    admin/                      a client certificate for local operators (doctor, curl --cert)
    ca-bundle.pem               every CA trusted right now; [api] tls_client_ca points here
    server.crt, server.key      the API's certificate (SANs: host name, addresses, localhost)
    previous-ca.crt/.key        the old CA, only between `rotate` and `rotate --finish`
    rotation.json               {"phase": "idle"|"staged", "since": ...}

Rotation, in three steps that each touch one machine at a time:

1. `pifarm pki rotate` creates a new CA; the bundle holds old + new; the server certificate stays
   (issued by the old CA, which every node still trusts). Restart the aggregator once so it loads
   the bundle. Old client certificates keep working.
2. Each node runs `pifarm pki renew` when convenient: it gets a client certificate from the new
   CA and the two-CA bundle, authenticated by its current certificate.
3. `pifarm pki rotate --finish` (refused while an enrolled node still holds an old-CA certificate,
   unless --force) issues a new server certificate from the new CA, drops the old CA from the
   bundle and deletes it. Restart the aggregator once more.

Node files (`/etc/pifarm/tls/`): node.key (0600), node.crt, ca-bundle.pem.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pifarm.client.tls import tls_context
from pifarm.durable import atomic_write, fsync_dir
from pifarm.errors import ConfigError, Conflict, IntegrityError, PifarmError, UsageError
from pifarm.pki import certs as x

CA_DAYS = 3650
ADMIN_DAYS = 90  # the operators' client certificate; `pki init` (run by setup) renews it when a third is left
SERVER_DAYS = 825
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
PREVIOUS_CERT = "previous-ca.crt"
PREVIOUS_KEY = "previous-ca.key"
STATE = "rotation.json"
NODE_KEY = "node.key"
NODE_CERT = "node.crt"
ADMIN = "admin"


def default_sans() -> tuple[list[str], list[str]]:
    """DNS names and IPs the server certificate covers by default: this host and loopback."""
    host = socket.gethostname()
    names = {"localhost", host, host.split(".")[0]}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    ips = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(host, None):
            ips.add(info[4][0].split("%")[0])
    except OSError:
        pass
    dns = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
    return sorted(n for n in names if n and dns.match(n)), sorted(ips)


@dataclass(frozen=True)
class AggregatorPki:
    """Handle on `<data_dir>/pki`; cheap, reads files on each call."""

    data_dir: Path

    @property
    def dir(self) -> Path:
        return Path(self.data_dir) / x.PKI_DIR

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def server_cert(self) -> Path:
        return self.path(SERVER_CERT)

    @property
    def server_key(self) -> Path:
        return self.path(SERVER_KEY)

    @property
    def bundle(self) -> Path:
        return self.path(x.BUNDLE)

    def exists(self) -> bool:
        return self.path(x.CA_KEY).is_file() and self.path(x.CA_CERT).is_file()

    def phase(self) -> str:
        try:
            return json.loads(self.path(STATE).read_text()).get("phase", "idle")
        except FileNotFoundError:
            return "idle"
        except ValueError as e:
            raise ConfigError(f"{self.path(STATE)} is not JSON; delete it only if no rotation is under way") from e

    def _set_phase(self, phase: str) -> None:
        atomic_write(self.path(STATE), json.dumps({"phase": phase, "since": _now_iso()}).encode(), 0o644)

    def ca(self):
        self.recover()
        return x.read_cert(self.path(x.CA_CERT)), x.read_key(self.path(x.CA_KEY))

    def recover(self) -> str | None:
        """Finish or undo a CA rotation a crash interrupted. Rotation writes the new CA beside the
        old one (`ca.crt.next`, `ca.key.next`), then commits by setting the phase to staged, then
        renames; so there is always a `ca.key`, and a half-done rotation is never mistaken for a
        missing CA (which `init` would replace with a new one)."""
        nxt_cert, nxt_key = self.path(x.CA_CERT + ".next"), self.path(x.CA_KEY + ".next")
        if not (nxt_cert.exists() or nxt_key.exists()):
            return None
        if self.phase() == "staged":  # committed: finish the switch, certificate first
            if nxt_cert.exists():
                os.replace(nxt_cert, self.path(x.CA_CERT))
            if nxt_key.exists():
                os.replace(nxt_key, self.path(x.CA_KEY))
            fsync_dir(self.dir)
            return "finished an interrupted CA rotation"
        nxt_cert.unlink(missing_ok=True)  # never committed: the old CA stays, as if rotate never ran
        nxt_key.unlink(missing_ok=True)
        self._write_bundle([x.read_cert(self.path(x.CA_CERT))])
        return "undid an interrupted CA rotation"

    def _write_bundle(self, certs: list[x509.Certificate]) -> None:
        atomic_write(self.bundle, b"".join(x.pem(c) for c in certs), 0o644)

    def init(self, *, common_name: str = "pifarm CA", dns_names=None, ips=None) -> list[str]:
        """Create the CA and server certificate if absent (idempotent); return what was created."""
        done = []
        if self.recover():
            done.append("recovered an interrupted CA rotation")
        if not self.exists() and (self.path(x.CA_CERT).exists() or self.path(x.CA_KEY).exists()
                                  or self.path(PREVIOUS_KEY).exists()):
            # half a CA is damage, not a fresh machine: a new CA would silently cut off every node
            raise ConfigError(f"{self.dir} holds part of a CA (ca.crt, ca.key or previous-ca.key without its pair); "
                              f"restore it from a backup, or move the directory aside to start a new farm CA")
        if not self.exists():
            key = x.new_key()
            cert = x.issue(None, key, key.public_key(), common_name, kind="ca", days=CA_DAYS)
            atomic_write(self.path(x.CA_KEY), x.key_pem(key), 0o600)
            atomic_write(self.path(x.CA_CERT), x.pem(cert), 0o644)
            self._write_bundle([cert])
            done += [str(self.path(x.CA_KEY)), str(self.path(x.CA_CERT)), str(self.bundle)]
        if not self.bundle.is_file():
            self._write_bundle([self.ca()[0]])
            done.append(str(self.bundle))
        if not (self.server_cert.is_file() and self.server_key.is_file()):
            self.issue_server(dns_names=dns_names, ips=ips)
            done += [str(self.server_key), str(self.server_cert)]
        if not NodeTls(self.admin_dir).exists() or _expiring(NodeTls(self.admin_dir).cert, ADMIN_DAYS / 3):
            self.issue_client(ADMIN, self.admin_dir, days=ADMIN_DAYS)
            done.append(str(self.admin_dir))
        return done

    @property
    def admin_dir(self) -> Path:
        """A client certificate for the aggregator's own operators (doctor, curl) over mTLS."""
        return self.dir / ADMIN

    def issue_server(self, *, dns_names=None, ips=None, days: int = SERVER_DAYS) -> x509.Certificate:
        if dns_names is None or ips is None:
            d, i = self._current_sans() or default_sans()
            dns_names = d if dns_names is None else dns_names
            ips = i if ips is None else ips
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError as e:
                raise UsageError(f"--ip {ip!r} is not an IP address") from e
        ca_cert, ca_key = self.ca()
        key = x.new_key()
        cn = (list(dns_names) or ["pifarm-aggregator"])[0]
        cert = x.issue(ca_cert, ca_key, key.public_key(), cn, kind="server", days=days, dns_names=dns_names, ips=ips)
        atomic_write(self.server_key, x.key_pem(key), 0o600)
        atomic_write(self.server_cert, x.pem(cert), 0o644)
        return cert

    def _current_sans(self) -> tuple[list[str], list[str]] | None:
        try:
            cert = x.read_cert(self.server_cert)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ConfigError, x509.ExtensionNotFound):
            return None
        return san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]

    def issue_client(self, name: str, out_dir: str | os.PathLike, *, days: int = x.CLIENT_DAYS,
                     not_before: dt.datetime | None = None) -> "NodeTls":
        """Write a client key + certificate + bundle into out_dir (manual enrollment, tests)."""
        if not x.NAME_RE.match(name):
            raise UsageError(f"client name {name!r} must be a plain host name")
        ca_cert, ca_key = self.ca()
        key = x.new_key()
        cert = x.issue(ca_cert, ca_key, key.public_key(), name, kind="client", days=days, not_before=not_before)
        tls = NodeTls(Path(out_dir))
        tls.store(key_pem=x.key_pem(key), cert_pem=x.pem(cert), bundle_pem=self.bundle.read_bytes())
        return tls

    def rotate(self) -> list[str]:
        """Step 1: a new CA, trusted alongside the old one. The server certificate is unchanged."""
        if not self.exists():
            raise ConfigError(f"no CA in {self.dir}; run `pifarm pki init` first")
        if self.phase() == "staged":
            raise Conflict("a CA rotation is already staged; finish it with `pifarm pki rotate --finish`")
        self.recover()
        old_cert = x.read_cert(self.path(x.CA_CERT))
        # copies, not moves: ca.key exists at every instant (see recover for the commit point)
        atomic_write(self.path(PREVIOUS_KEY), self.path(x.CA_KEY).read_bytes(), 0o600)
        atomic_write(self.path(PREVIOUS_CERT), self.path(x.CA_CERT).read_bytes(), 0o644)
        key = x.new_key()
        cert = x.issue(None, key, key.public_key(), f"pifarm CA {_now_iso()}", kind="ca", days=CA_DAYS)
        atomic_write(self.path(x.CA_KEY + ".next"), x.key_pem(key), 0o600)
        atomic_write(self.path(x.CA_CERT + ".next"), x.pem(cert), 0o644)
        self._write_bundle([cert, old_cert])
        self._set_phase("staged")  # the commit point
        self.recover()
        _rewrite_crl(self.data_dir)
        return [x.fingerprint(cert), x.fingerprint(old_cert)]

    def stragglers(self) -> list[x.HostRecord]:
        """Enrolled hosts whose certificate does not come from the current CA."""
        current = x.fingerprint(x.read_cert(self.path(x.CA_CERT)))
        return [h for h in x.read_hosts(self.data_dir) if h.ca_fingerprint != current]

    def finish(self, *, force: bool = False) -> x509.Certificate:
        """Step 3: server certificate from the new CA; the old CA is no longer trusted."""
        if self.phase() != "staged":
            raise Conflict("no CA rotation is staged; start one with `pifarm pki rotate`")
        late = self.stragglers()
        if late and not force:
            names = ", ".join(f"{h.hostname} ({h.hostnqn})" for h in late[:5])
            raise Conflict(f"{len(late)} node(s) still hold a certificate from the old CA: {names}; run `pifarm pki "
                           f"renew` on them first, or --force to cut them off")
        cert = self.issue_server()
        self._write_bundle([x.read_cert(self.path(x.CA_CERT))])
        self.issue_client(ADMIN, self.admin_dir, days=ADMIN_DAYS)
        self._set_phase("idle")
        self.path(PREVIOUS_KEY).unlink(missing_ok=True)
        self.path(PREVIOUS_CERT).unlink(missing_ok=True)
        _rewrite_crl(self.data_dir)
        return cert

    def status(self) -> dict[str, Any]:
        if not self.exists():
            return {"initialised": False, "dir": str(self.dir)}
        ca = x.read_cert(self.path(x.CA_CERT))
        out: dict[str, Any] = {"initialised": True, "dir": str(self.dir), "phase": self.phase(),
                               "ca": _describe(ca), "bundle": [_describe(c) for c in x.bundle_certs(self.dir)]}
        if self.server_cert.is_file():
            out["server"] = _describe(x.read_cert(self.server_cert))
        out["hosts"] = len(x.read_hosts(self.data_dir))
        if out["phase"] == "staged":
            out["stragglers"] = [h.hostnqn for h in self.stragglers()]
        return out


def _expiring(cert_path: Path, days: float) -> bool:
    try:
        left = x.read_cert(cert_path).not_valid_after_utc - x.utcnow()
    except ConfigError:
        return True
    return left < dt.timedelta(days=days)


def _rewrite_crl(data_dir: Path) -> None:
    """The CRLs follow the CAs: the mTLS server refuses a client whose CA has no CRL."""
    from pifarm.pki.revocation import write_crl

    write_crl(data_dir)


def _describe(cert: x509.Certificate) -> dict[str, str]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {"subject": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
            "fingerprint": x.fingerprint(cert),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _now_iso() -> str:
    return x.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeTls:
    """A node's client credentials directory (default /etc/pifarm/tls)."""

    dir: Path

    @property
    def key(self) -> Path:
        return Path(self.dir) / NODE_KEY

    @property
    def cert(self) -> Path:
        return Path(self.dir) / NODE_CERT

    @property
    def bundle(self) -> Path:
        return Path(self.dir) / x.BUNDLE

    def exists(self) -> bool:
        x.recover_pending_key(self.cert, self.key)
        return self.key.is_file() and self.cert.is_file() and self.bundle.is_file()

    def store(self, *, key_pem: bytes | None, cert_pem: bytes, bundle_pem: bytes) -> None:
        """New key beside the old (`node.key.next`), bundle, certificate, then the key swap: at
        every instant node.crt matches node.key or node.key.next, and whoever loads the pair
        next finishes the swap (`certs.recover_pending_key`). The old order (key first) left a
        key without its certificate after a crash: a node locked out of its aggregator."""
        pending = Path(str(self.key) + ".next")
        if key_pem is not None:
            atomic_write(pending, key_pem, 0o600)
        atomic_write(self.bundle, bundle_pem, 0o644)
        atomic_write(self.cert, cert_pem, 0o644)
        if key_pem is not None:
            os.replace(pending, self.key)
            fsync_dir(self.dir)

    def ssl_context(self) -> ssl.SSLContext:
        """Client context: verify the aggregator against the bundle and present our certificate."""
        if not self.exists():
            raise ConfigError(f"no client certificate in {self.dir}; enroll with `pifarm setup node --enroll-file TOKEN`")
        return tls_context(self.bundle, self.cert, self.key, hint="; enroll with `pifarm setup node --enroll-file TOKEN`")



def make_csr(key, common_name: str) -> str:
    from cryptography.hazmat.primitives import hashes

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _post(url: str, body: dict[str, Any], verify, timeout: float) -> dict[str, Any]:
    import httpx

    from pifarm.client.http import http_errors

    with http_errors(f"cannot reach {url}", "aggregator"):
        r = httpx.post(url, json=body, verify=verify, timeout=timeout)
    if r.status_code == 403:
        raise IntegrityError(f"{url} refused: {_detail(r)}")
    if r.status_code >= 400:
        raise PifarmError(f"{url} answered {r.status_code}: {_detail(r)}")
    return r.json()


def _detail(r) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return r.text[:200]


def fetch_bundle(url: str, *, ca_hash: str | None, timeout: float = 10.0,
                 trust_on_first_use: bool = False) -> tuple[bytes, list[str]]:
    """GET /v1/enroll/ca without verification, then require the pinned CA (`ca_hash`) to be in
    it. Without a pin only `trust_on_first_use` accepts whatever answers (and the registry signing
    keys it then hands over): anyone on the LAN could answer. Returns (bundle PEM, fingerprints)."""
    import httpx

    if ca_hash is None and not trust_on_first_use:
        raise UsageError("--ca-hash sha256:<hex> is required to know the aggregator is yours (printed by `pifarm "
                         "setup aggregator` and `pifarm pki status`); --trust-on-first-use accepts any answer")

    from pifarm.client.http import http_errors

    with http_errors(f"cannot reach the aggregator's enrollment endpoint at {url}", "aggregator"):
        r = httpx.get(url.rstrip("/") + "/v1/enroll/ca", verify=False, timeout=timeout)
    if r.status_code != 200:
        raise PifarmError(f"{url}/v1/enroll/ca answered {r.status_code}: {_detail(r)}")
    certs = x.load_certs(r.content, f"{url}/v1/enroll/ca")
    prints = [x.fingerprint(c) for c in certs]
    if ca_hash is not None and ca_hash.lower() not in prints:
        raise IntegrityError(f"the aggregator's CA {', '.join(prints)} does not match --ca-hash {ca_hash}; "
                             f"someone may be intercepting the connection")
    return r.content, prints


def enroll_node(url: str, secret: str, *, hostnqn: str, hostid: str, hostname: str, tls_dir: str | os.PathLike,
                ca_hash: str | None = None, timeout: float = 20.0, trust_on_first_use: bool = False) -> dict[str, Any]:
    """Node side of enrollment: key stays here, only a CSR travels; the token is sent only over a
    connection verified against the (pinned) CA bundle."""
    if not url.startswith("https://"):
        raise UsageError(f"--aggregator {url!r} must be an https:// URL (the enrollment token is never sent in clear)")
    bundle, _ = fetch_bundle(url, ca_hash=ca_hash, timeout=timeout, trust_on_first_use=trust_on_first_use)
    key = x.new_key()
    resp = _post(url.rstrip("/") + "/v1/enroll", {"secret": secret, "hostnqn": hostnqn, "hostid": hostid,
                                                  "hostname": hostname, "csr": make_csr(key, hostname)},
                 tls_context(cadata=bundle.decode()), timeout)
    tls = NodeTls(Path(tls_dir))
    tls.store(key_pem=x.key_pem(key), cert_pem=resp["certificate"].encode(), bundle_pem=resp["ca_bundle"].encode())
    return resp


def renew_node(url: str, tls_dir: str | os.PathLike, *, timeout: float = 20.0) -> dict[str, Any]:
    """Node side of renewal: a fresh key and a certificate from the aggregator's current CA."""
    tls = NodeTls(Path(tls_dir))
    ctx = tls.ssl_context()
    old_key = x.read_key(tls.key)
    cert = tls.cert.read_text()
    cn = x.read_cert(tls.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    key = x.new_key()
    csr = make_csr(key, str(cn[0].value) if cn else x.default_hostname())
    proof = base64.b64encode(x.sign_proof(old_key, csr.encode())).decode()
    resp = _post(url.rstrip("/") + "/v1/enroll/renew", {"certificate": cert, "csr": csr, "proof": proof}, ctx, timeout)
    tls.store(key_pem=x.key_pem(key), cert_pem=resp["certificate"].encode(), bundle_pem=resp["ca_bundle"].encode())
    return resp

"""Node enrollment on the aggregator: a node proves it knows the enrollment secret, sends a CSR and
its host identity, and gets back a client certificate for mTLS plus its host registration.

    GET  /v1/enroll/ca       the CA bundle (nodes pin it by hash before sending the secret)
    POST /v1/enroll          {secret, hostnqn, hostid, hostname, csr} -> certificate, bundle, ...
    POST /v1/enroll/renew    {certificate, csr, proof} -> a fresh certificate from the current CA

Renewal is authenticated by the node's current certificate *and* a signature of the new CSR by
its current key, so it works over any listener (the ASGI app never sees the TLS peer).

Everything lives in the aggregator data dir (written by `pifarm setup aggregator` /
`pifarm pki ...`): `pki/ca.crt`, `pki/ca.key`, `pki/ca-bundle.pem` (every CA trusted right now:
two during a rotation), `enroll-secret`, and one `hosts/<hostnqn>.json` per enrolled node, which
the target side turns into allowed hosts. The x509 helpers here are shared with
`pifarm.appliance.pki` so both issue certificates the same way.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pydantic import BaseModel, Field

from pifarm.errors import ConfigError, IntegrityError, UsageError

PKI_DIR = "pki"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
BUNDLE = "ca-bundle.pem"
SECRET_FILE = "enroll-secret"
HOSTS_DIR = "hosts"
CLIENT_DAYS = 365
NQN_RE = re.compile(r"^nqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[\x21-\x7e]+)?$")
HOSTID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_hostnqn(nqn: str) -> str:
    if not isinstance(nqn, str) or len(nqn.encode()) > 223 or not NQN_RE.match(nqn):
        raise UsageError(f"host NQN {nqn!r} is malformed (expected e.g. nqn.2014-08.org.nvmexpress:uuid:<uuid>, ≤ 223 bytes)")
    return nqn


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the DER certificate: what `--ca-hash` pins."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast handshakes on a Pi, accepted by every TLS stack.
    return ec.generate_private_key(ec.SECP256R1())


def load_certs(data: bytes, origin: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{origin} holds no valid PEM certificate: {e}") from e
    return certs


def read_cert(path: Path) -> x509.Certificate:
    try:
        return load_certs(path.read_bytes(), str(path))[0]
    except FileNotFoundError as e:
        raise ConfigError(f"certificate {path} does not exist; run `pifarm setup aggregator` or `pifarm pki init`") from e


def read_key(path: Path):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ConfigError(f"private key {path} does not exist; run `pifarm setup aggregator` or `pifarm pki init`") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"private key {path} is not an unencrypted PEM key: {e}") from e
    return key


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with 0600 contents (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def issue(
    ca_cert: x509.Certificate | None,
    ca_key,
    public_key,
    common_name: str,
    *,
    kind: str,
    days: int = CLIENT_DAYS,
    not_before: dt.datetime | None = None,
    dns_names: Iterable[str] = (),
    ips: Iterable[str] = (),
) -> x509.Certificate:
    """Issue one certificate. kind: "ca" (self-signed when ca_cert is None), "server" or "client"."""
    import ipaddress

    start = not_before or (utcnow() - dt.timedelta(minutes=5))  # tolerate small clock skew
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pifarm"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = subject if ca_cert is None else ca_cert.subject
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(start + dt.timedelta(days=days)))
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if ca_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    if kind == "ca":
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                          crl_sign=False, content_commitment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def bundle_certs(pki_dir: Path) -> list[x509.Certificate]:
    return load_certs((pki_dir / BUNDLE).read_bytes(), str(pki_dir / BUNDLE))


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def check_client_cert(cert: x509.Certificate, trusted: list[x509.Certificate], now: dt.datetime | None = None) -> x509.Certificate:
    """The CA in `trusted` that issued this still-valid client certificate; IntegrityError otherwise."""
    now = now or utcnow()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IntegrityError(f"certificate {cert.subject.rfc4514_string()} is not valid now "
                             f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
    for ca in trusted:
        if _signed_by(cert, ca):
            return ca
    raise IntegrityError(f"certificate {cert.subject.rfc4514_string()} was not issued by a CA this aggregator trusts")


def verify_proof(cert: x509.Certificate, data: bytes, proof: bytes) -> None:
    """Check that `proof` is the certificate key's signature over `data` (possession of the key)."""
    pub = cert.public_key()
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(proof, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(proof, data)
        elif isinstance(pub, rsa.RSAPublicKey):
            from cryptography.hazmat.primitives.asymmetric import padding
            pub.verify(proof, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise IntegrityError("unsupported key type in certificate")
    except InvalidSignature as e:
        raise IntegrityError("renewal proof does not verify with the presented certificate's key") from e


def sign_proof(key, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    from cryptography.hazmat.primitives.asymmetric import padding
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class HostRecord:
    """One enrolled node, as written to `hosts/<hostnqn>.json` and handed to `register_host`."""

    hostnqn: str
    hostid: str
    hostname: str
    cert_serial: str
    cert_not_after: str
    ca_fingerprint: str
    enrolled_at: str
    dhchap_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def read_hosts(data_dir: str | os.PathLike) -> list[HostRecord]:
    """Every enrolled host (what the target turns into `allowed_hosts`), sorted by NQN."""
    d = Path(data_dir) / HOSTS_DIR
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else ():
        try:
            out.append(HostRecord(**json.loads(p.read_text())))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"host record {p} is malformed: {e}; re-enroll the node or delete the file") from e
    return out


def host_path(data_dir: Path, hostnqn: str) -> Path:
    # NQNs contain ':' which is fine on Linux filesystems; '/' is excluded by NQN_RE's charset? no: guard.
    if "/" in hostnqn or hostnqn.startswith("."):
        raise UsageError(f"host NQN {hostnqn!r} cannot name a file")
    return data_dir / HOSTS_DIR / f"{hostnqn}.json"


class Enrollment:
    """The aggregator side of enrollment and renewal, over the files in the data dir."""

    def __init__(self, data_dir: str | os.PathLike, *, cert_days: int = CLIENT_DAYS,
                 register_host: Callable[[HostRecord], str | None] | None = None):
        self.data_dir = Path(data_dir)
        self.pki = self.data_dir / PKI_DIR
        self.cert_days = cert_days
        self.register_host = register_host

    def enabled(self) -> bool:
        return (self.data_dir / SECRET_FILE).is_file() and (self.pki / CA_KEY).is_file()

    def check_secret(self, secret: str) -> bool:
        try:
            want = (self.data_dir / SECRET_FILE).read_text().strip()
        except FileNotFoundError:
            return False
        return bool(want) and hmac.compare_digest(want.encode(), secret.strip().encode())

    def bundle_pem(self) -> bytes:
        try:
            return (self.pki / BUNDLE).read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(f"{self.pki / BUNDLE} is missing; run `pifarm pki init`") from e

    def _sign(self, csr_pem: str, common_name: str) -> x509.Certificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as e:
            raise UsageError(f"csr is not a PEM certificate signing request: {e}") from e
        if not csr.is_signature_valid:
            raise UsageError("csr signature does not verify")
        ca_cert, ca_key = read_cert(self.pki / CA_CERT), read_key(self.pki / CA_KEY)
        return issue(ca_cert, ca_key, csr.public_key(), common_name, kind="client", days=self.cert_days)

    def _record(self, hostnqn: str, hostid: str, hostname: str, cert: x509.Certificate, *,
                register: bool = True) -> HostRecord:
        path = host_path(self.data_dir, hostnqn)
        old = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
        rec = HostRecord(hostnqn=hostnqn, hostid=hostid, hostname=hostname, cert_serial=format(cert.serial_number, "x"),
                         cert_not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         ca_fingerprint=fingerprint(read_cert(self.pki / CA_CERT)),
                         enrolled_at=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
                         dhchap_key=(old or {}).get("dhchap_key"))
        if register and self.register_host is not None:
            # The target side allows the NQN and, with auth on, returns its DH-HMAC-CHAP secret.
            key = self.register_host(rec)
            if key:
                rec = HostRecord(**{**rec.to_json(), "dhchap_key": key})
        write_private(path, json.dumps(rec.to_json(), indent=2, sort_keys=True).encode())
        return rec

    def enroll(self, secret: str, hostnqn: str, hostid: str, hostname: str, csr_pem: str) -> dict[str, Any]:
        check_hostnqn(hostnqn)
        if not HOSTID_RE.match(hostid or ""):
            raise UsageError(f"hostid {hostid!r} is not a UUID")
        if not NAME_RE.match(hostname or ""):
            raise UsageError(f"hostname {hostname!r} is not a plain host name")
        cert = self._sign(csr_pem, hostname)
        rec = self._record(hostnqn, hostid, hostname, cert)
        return {"certificate": pem(cert).decode(), "ca_bundle": self.bundle_pem().decode(), "hostnqn": hostnqn,
                "dhchap_key": rec.dhchap_key, "not_after": rec.cert_not_after, "signing_keys": self.signing_keys()}

    def signing_keys(self) -> list[str]:
        """The registry's public signing keys (PEM): what the node must trust for manifests."""
        d = self.data_dir / "keys"
        return [p.read_text() for p in sorted(d.glob("*.pub"))] if d.is_dir() else []

    def renew(self, cert_pem: str, csr_pem: str, proof_b64: str) -> dict[str, Any]:
        import base64

        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError as e:
            raise UsageError(f"certificate or proof is malformed: {e}") from e
        check_client_cert(cert, bundle_certs(self.pki))
        verify_proof(cert, csr_pem.encode(), proof)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = cn[0].value if cn else "node"
        new = self._sign(csr_pem, str(name))
        serial = format(cert.serial_number, "x")
        for rec in read_hosts(self.data_dir):
            if rec.cert_serial == serial:
                # a renewal changes only the certificate: the host stays allowed with the same secret
                self._record(rec.hostnqn, rec.hostid, rec.hostname, new, register=False)
                break
        return {"certificate": pem(new).decode(), "ca_bundle": self.bundle_pem().decode(),
                "not_after": new.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass(frozen=True)
class EnrollSettings:
    """`[enroll]` in aggregator.toml."""

    enabled: bool = True
    #: the enrollment listener (server TLS only); "" = the API's host, its port + 1
    listen: str = ""
    #: days a node's client certificate is valid
    cert_days: int = CLIENT_DAYS
    #: issue a DH-HMAC-CHAP secret to each enrolled host (the target then requires it)
    dhchap: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.cert_days <= 3650:
            raise ConfigError(f"[enroll] cert_days must be 1..3650, got {self.cert_days}")


def enroll_listen(settings: EnrollSettings, api_listen: str) -> tuple[str, int]:
    from pifarm.registry.settings import parse_listen

    if settings.listen:
        return parse_listen(settings.listen)
    host, port = parse_listen(api_listen)
    return host, (port + 1 if port else 0)


def client_ssl_context(cert: str | os.PathLike, key: str | os.PathLike, ca: str | os.PathLike):
    """What a node's HTTP clients pass as httpx `verify=`: trust the farm CA bundle and present
    the node's client certificate (mTLS). Lives here because node-side code may not import the
    appliance."""
    import ssl

    for p in (cert, key, ca):
        if not Path(p).is_file():
            raise ConfigError(f"TLS file {p} does not exist; enroll with `pifarm setup node --enroll SECRET`")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise ConfigError(f"client certificate {cert} / key {key} unusable: {e}") from e
    return ctx


class EnrollBody(BaseModel):
    secret: str = Field(max_length=256)
    hostnqn: str = Field(max_length=223)
    hostid: str = Field(max_length=64)
    hostname: str = Field(max_length=63)
    csr: str = Field(max_length=16384)


class RenewBody(BaseModel):
    certificate: str = Field(max_length=16384)
    csr: str = Field(max_length=16384)
    proof: str = Field(max_length=1024)


def enroll_router(data_dir: str | os.PathLike, *, cert_days: int = CLIENT_DAYS,
                  register_host: Callable[[HostRecord], str | None] | None = None):
    """The enrollment endpoints as a FastAPI router; mount it on the aggregator app."""
    from fastapi import APIRouter, HTTPException
    from fastapi.responses import Response

    from pifarm.errors import PifarmError

    enr = Enrollment(data_dir, cert_days=cert_days, register_host=register_host)
    router = APIRouter(tags=["enroll"])

    def _unavailable() -> HTTPException:
        return HTTPException(404, "enrollment is not set up on this aggregator; run `pifarm setup aggregator`")

    @router.get("/v1/enroll/ca", response_class=Response)
    def enroll_ca():
        if not (enr.pki / BUNDLE).is_file():
            raise _unavailable()
        return Response(enr.bundle_pem(), media_type="application/x-pem-file")

    @router.post("/v1/enroll")
    def enroll(body: EnrollBody) -> dict[str, Any]:
        if not enr.enabled():
            raise _unavailable()
        if not enr.check_secret(body.secret):
            raise HTTPException(403, "enrollment secret is wrong; copy it from the aggregator's enroll-secret file")
        try:
            return enr.enroll(body.secret, body.hostnqn, body.hostid, body.hostname, body.csr)
        except (UsageError, IntegrityError) as e:
            raise HTTPException(400 if isinstance(e, UsageError) else 403, str(e)) from e
        except PifarmError as e:
            raise HTTPException(503, str(e)) from e

    @router.post("/v1/enroll/renew")
    def renew(body: RenewBody) -> dict[str, Any]:
        if not (enr.pki / CA_KEY).is_file():
            raise _unavailable()
        try:
            return enr.renew(body.certificate, body.csr, body.proof)
        except UsageError as e:
            raise HTTPException(400, str(e)) from e
        except IntegrityError as e:
            raise HTTPException(403, str(e)) from e
        except PifarmError as e:
            raise HTTPException(503, str(e)) from e

    return router


def enroll_app(data_dir: str | os.PathLike, **kwargs):
    """A FastAPI app with only the enrollment routes: served on the enrollment listener, where
    nodes that have no client certificate yet may connect (server TLS only)."""
    from fastapi import FastAPI

    app = FastAPI(title="pifarm enrollment", docs_url=None, redoc_url=None)
    app.include_router(enroll_router(data_dir, **kwargs))
    return app


def default_hostname() -> str:
    name = socket.gethostname().split(".")[0]
    return name if NAME_RE.match(name) else "node"


def enrollment_server(data_dir: str | os.PathLike, host: str, port: int, *, certfile: str, keyfile: str,
                      register_host: Callable[[HostRecord], str | None] | None = None, log_level: str = "warning"):
    """A uvicorn.Server for the enrollment listener (server TLS only: the nodes calling it have no
    client certificate yet). The aggregator runs it beside its mTLS API; `await server.serve()`."""
    import uvicorn

    config = uvicorn.Config(enroll_app(data_dir, register_host=register_host), host=host, port=port,
                            ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level, access_log=False,
                            lifespan="off")
    return uvicorn.Server(config)

"""X.509 primitives of the farm PKI and the enrolled-host records: keys, certificates, proofs
of possession, and `hosts/<hostnqn>.json`.

Both the aggregator (CA, enrollment) and the node (client certificates) use these.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


from pifarm.errors import ConfigError, IntegrityError, UsageError

PKI_DIR = "pki"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
BUNDLE = "ca-bundle.pem"
SECRET_FILE = "enroll-secret"
HOSTS_DIR = "hosts"
from pifarm.pki.settings import CLIENT_DAYS  # noqa: E402,F401  (one default, used by settings too)
NQN_RE = re.compile(r"^nqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[\x21-\x7e]+)?\Z")
HOSTID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


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



def default_hostname() -> str:
    name = socket.gethostname().split(".")[0]
    return name if NAME_RE.match(name) else "node"



def recover_pending_key(cert: str | os.PathLike, key: str | os.PathLike) -> bool:
    """Finish a key swap a crash interrupted (`NodeTls.store` writes `<key>.next`, then the
    certificate, then renames): if the certificate is for the pending key, the pending key
    becomes the key; if not, the renewal never got its certificate and the pending key goes."""
    pending = Path(str(key) + ".next")
    if not pending.is_file():
        return False
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        mine = read_cert(Path(cert)).public_key().public_bytes(*spki)
        new = read_key(pending).public_key().public_bytes(*spki)
    except (ConfigError, ValueError):
        return False
    if mine == new:
        os.replace(pending, key)
    else:
        pending.unlink()
    return True

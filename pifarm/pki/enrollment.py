"""The CA side of enrollment: check the one-time token, sign a node's CSR, record the host, renew.

A node presents a one-time enrollment token (`pifarm.pki.tokens`; the fleet-wide secret of older
farms still works while its file exists), sends a CSR and its host identity, and gets back a
client certificate for mTLS plus its host registration (routes: `pifarm.registry.enroll_api`).
An NQN already held by a live certificate is not handed over unless the token allows a takeover.

Renewal is authenticated by the node's current certificate *and* a signature of the new CSR by
its current key, so it works over any listener (the ASGI app never sees the TLS peer); only a
certificate still on record and not revoked (`pifarm.pki.revocation`) renews.

Everything lives in the aggregator data dir (written by `pifarm setup aggregator` /
`pifarm pki ...`): `pki/ca.crt`, `pki/ca.key`, `pki/ca-bundle.pem` (every CA trusted right now:
two during a rotation), `enroll-secret`, and one `hosts/<hostnqn>.json` per enrolled node, which
the target side turns into allowed hosts. The x509 helpers in `pifarm.pki.certs`
are shared with `pifarm.pki.farm` so both issue certificates the same way.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography import x509
from cryptography.x509.oid import NameOID


from pifarm.durable import atomic_write
from pifarm.errors import ConfigError, Conflict, Forbidden, UsageError
from pifarm.pki.certs import (
    BUNDLE, CA_CERT, CA_KEY, CLIENT_DAYS, HOSTID_RE, NAME_RE, PKI_DIR, SECRET_FILE, HostRecord, bundle_certs,
    check_client_cert, check_hostnqn, fingerprint, host_path, issue, pem, read_cert, read_hosts, read_key, utcnow,
    verify_proof,
)
from pifarm.pki import revocation
from pifarm.pki.tokens import PREFIX, TokenStore

log = logging.getLogger(__name__)


class Enrollment:
    """The aggregator side of enrollment and renewal, over the files in the data dir."""

    def __init__(self, data_dir: str | os.PathLike, *, cert_days: int = CLIENT_DAYS,
                 register_host: Callable[[HostRecord], str | None] | None = None):
        self.data_dir = Path(data_dir)
        self.pki = self.data_dir / PKI_DIR
        self.cert_days = cert_days
        self.register_host = register_host

    def enabled(self) -> bool:
        return (self.pki / CA_KEY).is_file()

    def check_secret(self, secret: str) -> bool:
        """The legacy fleet-wide `enroll-secret` (reusable, never expires): accepted while the
        file exists, for farms set up before one-time tokens."""
        try:
            want = (self.data_dir / SECRET_FILE).read_text().strip()
        except FileNotFoundError:
            return False
        return bool(want) and hmac.compare_digest(want.encode(), secret.strip().encode())

    @contextlib.contextmanager
    def authorize(self, secret: str, hostnqn: str) -> Iterator[bool]:
        """Admit one enrollment; yields whether it may take over an NQN enrolled under another
        certificate. A one-time token is spent only when the enrollment succeeds."""
        if secret.strip().startswith(PREFIX):
            with TokenStore(self.data_dir).redeem(secret, hostnqn) as tok:
                yield tok.takeover
            return
        if not self.check_secret(secret):
            raise Forbidden("enrollment token is unknown; create one with `pifarm enroll token create --ttl 1h`")
        log.warning("host %s enrolled with the fleet-wide enroll-secret (deprecated: it never expires; use "
                    "`pifarm enroll token create` and delete %s)", hostnqn, self.data_dir / SECRET_FILE)
        yield False

    def _check_takeover(self, hostnqn: str, takeover: bool) -> None:
        """An NQN is a claim anyone can make: one held by a live certificate is not handed to a
        new enrollee unless the operator said so (a token created with --takeover), and then
        the old certificate is revoked."""
        path = host_path(self.data_dir, hostnqn)
        try:
            old = HostRecord(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return
        live = old.cert_not_after > utcnow().strftime("%Y-%m-%dT%H:%M:%SZ") and \
            not revocation.is_revoked(self.data_dir, old.cert_serial)
        if not live:
            return
        if not takeover:
            raise Conflict(f"host {hostnqn} is already enrolled ({old.hostname}, certificate {old.cert_serial}); "
                           f"revoke it with `pifarm enroll revoke {hostnqn}` or enroll with a token created "
                           f"with --takeover")
        revocation.add_serial(self.data_dir, old.cert_serial, hostnqn=hostnqn, hostname=old.hostname)
        log.warning("host %s taken over by a new enrollment; certificate %s (%s) revoked", hostnqn,
                    old.cert_serial, old.hostname)

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
                register: bool = True, fresh: bool = False) -> HostRecord:
        path = host_path(self.data_dir, hostnqn)
        old = None
        if path.exists() and not fresh:  # a takeover never inherits the previous holder's secret
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
        atomic_write(path, json.dumps(rec.to_json(), indent=2, sort_keys=True).encode(), 0o600)
        return rec

    def enroll(self, secret: str, hostnqn: str, hostid: str, hostname: str, csr_pem: str) -> dict[str, Any]:
        check_hostnqn(hostnqn)
        if not HOSTID_RE.match(hostid or ""):
            raise UsageError(f"hostid {hostid!r} is not a UUID")
        if not NAME_RE.match(hostname or ""):
            raise UsageError(f"hostname {hostname!r} is not a plain host name")
        with self.authorize(secret, hostnqn) as takeover:
            self._check_takeover(hostnqn, takeover)
            cert = self._sign(csr_pem, hostname)
            rec = self._record(hostnqn, hostid, hostname, cert, fresh=takeover)
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
        serial = format(cert.serial_number, "x")
        # only a certificate still on record renews: not a revoked one, not one whose host was
        # removed or re-enrolled, not one renewed already (its successor is on record)
        rec = next((r for r in read_hosts(self.data_dir) if r.cert_serial == serial), None)
        if rec is None or revocation.is_revoked(self.data_dir, serial):
            raise Forbidden(f"certificate {serial} is not on record (revoked, renewed already, or its host was "
                            f"removed); enroll the node again with a new token")
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = cn[0].value if cn else "node"
        new = self._sign(csr_pem, str(name))
        # a renewal changes only the certificate: the host stays allowed with the same secret
        self._record(rec.hostnqn, rec.hostid, rec.hostname, new, register=False)
        return {"certificate": pem(new).decode(), "ca_bundle": self.bundle_pem().decode(),
                "not_after": new.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}


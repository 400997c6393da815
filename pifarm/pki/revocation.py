"""Certificate revocation for the farm PKI: `pki/revoked.json`, the CRLs the mTLS server checks,
and the hook that makes a running server see a new revocation without a restart.

`revoke(data_dir, hostnqn)` records the host's certificate serial, removes its host record (so
renewal is refused: only certificates on record renew) and rewrites `pki/crl.pem`, one CRL per
CA whose key the aggregator holds (the current one, and the previous one during a rotation).

`install(ctx, ...)` turns on CRL checking for client certificates on a server `SSLContext`
(uvicorn's). OpenSSL reads CRLs into the context's store once, so each handshake is moved, in
the ClientHello callback, onto a context built from the newest `crl.pem`: revoking takes effect
on the next connection.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pifarm.durable import atomic_write
from pifarm.errors import ConfigError, NotFound
from pifarm.pki import certs as x

log = logging.getLogger(__name__)

REVOKED = "revoked.json"
CRL = "crl.pem"
CRL_DAYS = 3650  # a CRL past its nextUpdate fails every handshake; it is rewritten on every change


def revoked(data_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{certificate serial (hex): {hostnqn, hostname, revoked_at}}."""
    p = Path(data_dir) / x.PKI_DIR / REVOKED
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ConfigError(f"{p} is not JSON: {e}; it lists revoked certificates, restore it from a backup") from e


def is_revoked(data_dir: str | os.PathLike, serial: int | str) -> bool:
    s = serial if isinstance(serial, str) else format(serial, "x")
    return s in revoked(data_dir)


def revoke(data_dir: str | os.PathLike, hostnqn: str) -> x.HostRecord:
    """Revoke the certificate of an enrolled host and forget the host. Returns its old record."""
    d = Path(data_dir)
    path = x.host_path(d, x.check_hostnqn(hostnqn))
    try:
        rec = x.HostRecord(**json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise NotFound(f"host {hostnqn} is not enrolled (no {path})") from e
    add_serial(d, rec.cert_serial, hostnqn=rec.hostnqn, hostname=rec.hostname)
    path.unlink()
    return rec


def add_serial(data_dir: str | os.PathLike, serial: str, **info: str) -> None:
    d = Path(data_dir)
    doc = revoked(d)
    doc[serial] = {**info, "revoked_at": x.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}
    atomic_write(d / x.PKI_DIR / REVOKED, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)
    write_crl(d)


def _ca_pairs(pki: Path) -> list[tuple[Any, Any]]:
    pairs = []
    for cert_name, key_name in ((x.CA_CERT, x.CA_KEY), ("previous-ca.crt", "previous-ca.key")):
        if (pki / cert_name).is_file() and (pki / key_name).is_file():
            pairs.append((x.read_cert(pki / cert_name), x.read_key(pki / key_name)))
    return pairs


def write_crl(data_dir: str | os.PathLike) -> Path | None:
    """`pki/crl.pem`: one CRL per CA key we hold, each listing every revoked serial. None when the
    aggregator holds no CA key (an external CA: revocation is then that CA's business)."""
    d = Path(data_dir)
    pki = d / x.PKI_DIR
    pairs = _ca_pairs(pki)
    if not pairs:
        return None
    now = x.utcnow()
    serials = sorted(revoked(d))
    out = []
    for ca_cert, ca_key in pairs:
        b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
             .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=CRL_DAYS)))
        for s in serials:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(s, 16))
                                          .revocation_date(now).build())
        algo = None if ca_key.__class__.__name__.startswith("Ed") else hashes.SHA256()
        out.append(b.sign(ca_key, algo).public_bytes(serialization.Encoding.PEM))
    return atomic_write(pki / CRL, b"".join(out), 0o644)


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    return [x509.load_pem_x509_crl(b"-----BEGIN" + part) for part in path.read_bytes().split(b"-----BEGIN")[1:]]


def crl_covers(data_dir: str | os.PathLike, client_ca: str | os.PathLike) -> bool:
    """Whether `crl.pem` has a CRL for every CA in the client CA bundle (OpenSSL refuses a leaf
    whose issuer has no CRL once checking is on, so checking is turned on only then)."""
    try:
        crls = load_crls(Path(data_dir) / x.PKI_DIR / CRL)
        cas = x.load_certs(Path(client_ca).read_bytes(), str(client_ca))
    except (OSError, ValueError, ConfigError):
        return False
    issuers = {c.issuer for c in crls}
    return all(ca.subject in issuers for ca in cas)


class Revocation:
    """CRL checking on a server context, following `crl.pem` as it changes."""

    def __init__(self, data_dir: str | os.PathLike, *, certfile: str, keyfile: str, client_ca: str):
        self.data_dir = Path(data_dir)
        self.crl = self.data_dir / x.PKI_DIR / CRL
        self.certfile, self.keyfile, self.client_ca = certfile, keyfile, client_ca
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._ctx: ssl.SSLContext | None = None

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        ctx.load_verify_locations(self.client_ca)
        ctx.load_verify_locations(str(self.crl))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    def current(self) -> ssl.SSLContext:
        st = self.crl.stat()
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if self._ctx is None or stamp != self._stamp:
                self._ctx, self._stamp = self._build(), stamp
            return self._ctx

    def on_hello(self, sslobj, server_name, ctx) -> None:
        try:
            sslobj.context = self.current()
        except Exception as e:  # keep the base context (which checks the CRL it was built with)
            log.warning("reloading %s failed, using the revocation list loaded before: %s", self.crl, e)


def install(ctx: ssl.SSLContext, data_dir: str | os.PathLike, *, certfile: str, keyfile: str,
            client_ca: str) -> Revocation | None:
    """Check client certificates against the farm's CRLs on `ctx` (writing them first if needed).
    Returns None, with a warning, when the client CA bundle holds a CA the aggregator has no key
    for (no CRL can be made for it)."""
    d = Path(data_dir)
    if not (d / x.PKI_DIR / CRL).is_file():
        write_crl(d)
    if not crl_covers(d, client_ca):
        write_crl(d)  # a rotation added a CA since the CRLs were written
        if not crl_covers(d, client_ca):
            log.warning("client certificates are not checked for revocation: %s holds a CA whose key is not in %s",
                        client_ca, d / x.PKI_DIR)
            return None
    rev = Revocation(d, certfile=certfile, keyfile=keyfile, client_ca=client_ca)
    ctx.load_verify_locations(str(rev.crl))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.sni_callback = rev.on_hello
    return rev


def install_uvicorn(config, data_dir: str | os.PathLike, *, certfile: str, keyfile: str,
                    client_ca: str) -> Revocation | None:
    """`install` on a uvicorn.Config's server context (loading the config builds it)."""
    if not config.loaded:
        config.load()
    return install(config.ssl, data_dir, certfile=certfile, keyfile=keyfile, client_ca=client_ca)

"""mTLS between nodes for the piece exchange (issue 16): the farm CA on both ends.

The piece server asks every connection for a client certificate the farm CA signed (a bundle of
CAs during a rotation); a connection without one is answered 403 with what is missing, one from
another CA fails its handshake. The asking node presents its own certificate.

Node certificates are client certificates (extended key usage clientAuth only), which OpenSSL
refuses as a server's ("unsuitable certificate purpose"). So the piece server presents it anyway
and the asking node checks it itself, before any request (with its swarm token) leaves: issued by
a CA of the bundle and valid now (`pifarm.pki.certs.check_client_cert`, the check the aggregator
makes for renewals). Peers are addressed by IP and node certificates name no address, so there is
no host name to match; any enrolled node may serve pieces, which are verified by digest anyway.

The swarm token stays required under mTLS too: it comes from the tracker, which refuses revoked
nodes, while a node has no CRL of its own.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

from pifarm.errors import ConfigError, IntegrityError, SourceError

NO_CERT = ("this piece server serves enrolled nodes only: connect with the node's client certificate from "
           "the farm CA ([node] tls_cert / tls_key)")


class PeerTls:
    def __init__(self, ca: str, cert: str, key: str):
        from pifarm.pki.certs import load_certs

        for p in (ca, cert, key):
            if not Path(p).is_file():
                raise ConfigError(f"peers mTLS: {p} does not exist ([node] tls_ca / tls_cert / tls_key)")
        try:
            self.ca_certs = load_certs(Path(ca).read_bytes(), ca)
            self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.server.load_cert_chain(cert, key)
            self.server.load_verify_locations(cafile=ca)
            self.server.verify_mode = ssl.CERT_OPTIONAL  # none: a 403 naming what is missing, not a bare alert
            self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.client.check_hostname = False
            self.client.verify_mode = ssl.CERT_NONE  # checked by check_server (see the module doc)
            self.client.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError, ValueError, IntegrityError) as e:
            raise ConfigError(f"peers mTLS: ca={ca} cert={cert} key={key} are not usable: {e}") from e
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def check_server(self, der: bytes | None, where: str) -> None:
        """The peer's certificate (DER) was issued by the farm CA and is valid; SourceError if not."""
        if not der:
            raise SourceError(f"peer {where} presented no certificate; it is not an enrolled node", "peers")
        with self._lock:
            if der in self._ok:
                return
        from cryptography import x509

        from pifarm.pki.certs import check_client_cert

        try:
            check_client_cert(x509.load_der_x509_certificate(der), self.ca_certs)
        except (IntegrityError, ValueError) as e:
            raise SourceError(f"peer {where} is not an enrolled node of this farm: {e}", "peers") from e
        with self._lock:
            if len(self._ok) > 4096:  # bounded: the farm's nodes, a few certificates each over time
                self._ok.clear()
            self._ok.add(der)


def peer_tls(mode: str, ca: str, cert: str, key: str) -> PeerTls | None:
    """`[peers] tls` / the peers source's `tls` option with [node]'s files: PeerTls or None (token only)."""
    if mode == "off":
        return None
    if not (ca and cert and key):
        if mode == "on":
            raise ConfigError("peers tls = \"on\" needs [node] tls_ca, tls_cert and tls_key (the farm CA bundle and "
                              "this node's certificate)")
        return None
    return PeerTls(ca, cert, key)

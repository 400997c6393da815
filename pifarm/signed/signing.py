"""Ed25519 signing of registry documents (manifests, snapshots).

A signed document is `{"signed": {...}, "signatures": [{"keyid": K, "sig": base64}]}`; the
signature covers the canonical bytes of `signed`. Several signatures may be present so keys
can be rotated: a verifier accepts the document when any signature is by a trusted key.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pifarm.durable import atomic_create, atomic_write
from pifarm.errors import ConfigError, SignatureError, UsageError
from pifarm.signed.canonical import canonical_bytes

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return blake3.blake3(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def keyid(self) -> str:
        return key_id(self.public)

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        sig = self.private.sign(canonical_bytes(body))
        return {"signed": body, "signatures": [{"keyid": self.keyid, "sig": base64.b64encode(sig).decode()}]}

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        try:
            data = Path(path).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except FileNotFoundError as e:
            raise ConfigError(f"signing key {path} does not exist; create one with `pifarm keys generate`") from e
        except (ValueError, TypeError) as e:
            raise ConfigError(f"signing key {path} is not a PEM Ed25519 private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"signing key {path} is not an Ed25519 key")
        return cls(key)

    def write(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write `signing.key` (0600, never overwritten) and `signing.pub` into directory."""
        d = Path(directory)
        priv, pub = d / PRIVATE_NAME, d / PUBLIC_NAME
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_create(priv, pem, 0o600)
        atomic_write(pub, public_pem(self.public), 0o644)
        return priv, pub


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(data: bytes | str, origin: str = "key") -> Ed25519PublicKey:
    raw = data.encode() if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except ValueError as e:
        raise ConfigError(f"trusted key {origin} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {origin} is not an Ed25519 key")
    return key


class TrustedKeys:
    """The public keys a node (or the registry itself) accepts signatures from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()):
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike]) -> "TrustedKeys":
        keys = []
        for p in paths:
            try:
                keys.append(load_public(Path(p).read_bytes(), origin=str(p)))
            except FileNotFoundError as e:
                raise ConfigError(f"trusted key file {p} does not exist") from e
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keyids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, document: Any, what: str = "document") -> dict[str, Any]:
        """Return document["signed"] if a trusted key signed it; raise SignatureError otherwise."""
        if not isinstance(document, dict) or not isinstance(document.get("signed"), dict):
            raise SignatureError(f"{what} is not a signed document (no 'signed' object)")
        sigs = document.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise SignatureError(f"{what} carries no signatures")
        if not self._keys:
            raise SignatureError(f"{what}: no trusted keys configured; add the registry's signing.pub")
        try:
            body = canonical_bytes(document["signed"])
        except UsageError as e:
            raise SignatureError(f"{what}: {e}") from e
        seen = []
        for s in sigs:
            if not isinstance(s, dict):
                continue
            kid = s.get("keyid")
            seen.append(str(kid))
            key = self._keys.get(kid)
            if key is None:
                continue
            try:
                key.verify(base64.b64decode(s.get("sig", ""), validate=True), body)
            except (InvalidSignature, ValueError):
                raise SignatureError(f"{what}: signature by key {kid} does not verify (tampered?)") from None
            return document["signed"]
        raise SignatureError(f"{what}: signed by unknown key(s) {', '.join(seen)}; trusted: {', '.join(self.keyids)}")

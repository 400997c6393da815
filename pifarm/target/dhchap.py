"""DH-HMAC-CHAP secrets in the NVMe representation `nvme gen-dhchap-key` prints and the kernel
reads from `hosts/<nqn>/dhchap_key`:

    DHHC-1:<hh>:<base64(key ‖ CRC-32(key) little-endian)>:

hh names the hash the secret was transformed with: 00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512;
the key is 32, 48 or 64 bytes (with a hash: exactly that hash's length). Like libnvme, a non-zero
hh stores HMAC-<hash>(secret, host NQN ‖ "NVMe-over-Fabrics") rather than the raw random secret.
"""

from __future__ import annotations

import base64
import hmac as hmaclib
import os
import re
import zlib
from dataclasses import dataclass

from pifarm.errors import UsageError

__all__ = ["DhchapKey", "gen_dhchap_key", "parse_dhchap_key", "redact", "HASHES", "KERNEL_HASH_NAMES", "DHGROUPS"]

#: hh -> (hashlib name, key length); hh 0 accepts any of 32/48/64
HASHES = {0: (None, 32), 1: ("sha256", 32), 2: ("sha384", 48), 3: ("sha512", 64)}
#: the names hosts/<nqn>/dhchap_hash accepts
KERNEL_HASH_NAMES = {"sha256": "hmac(sha256)", "sha384": "hmac(sha384)", "sha512": "hmac(sha512)"}
DHGROUPS = ("null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")
_RE = re.compile(r"^DHHC-1:([0-9]{2}):([A-Za-z0-9+/]+={0,2}):\Z")
_ANYWHERE = re.compile(r"DHHC-1:[0-9A-Fa-f]{2}:[A-Za-z0-9+/=]*:?")


def redact(text: str) -> str:
    """`text` with every DH-HMAC-CHAP secret in it replaced (for errors that leave the process)."""
    return _ANYWHERE.sub("DHHC-1:<secret>", text)


@dataclass(frozen=True)
class DhchapKey:
    hmac: int
    key: bytes

    def __str__(self) -> str:
        crc = zlib.crc32(self.key).to_bytes(4, "little")
        return f"DHHC-1:{self.hmac:02x}:{base64.b64encode(self.key + crc).decode()}:"

    def __repr__(self) -> str:  # never print a secret by accident
        return f"DhchapKey(hmac={self.hmac}, key=<{len(self.key)} bytes>)"


def gen_dhchap_key(nqn: str, hmac: int = 1, key_len: int | None = None, secret: bytes | None = None) -> DhchapKey:
    """A fresh secret for host `nqn`, as `nvme gen-dhchap-key --nqn=NQN --hmac=H` makes it."""
    if hmac not in HASHES:
        raise UsageError(f"dhchap hmac must be 0 (none), 1 (sha256), 2 (sha384) or 3 (sha512), got {hmac!r}")
    name, default_len = HASHES[hmac]
    n = key_len or default_len
    if n not in (32, 48, 64) or (name and n != default_len):
        raise UsageError(f"dhchap key length {n} does not fit hmac {hmac} (expected {default_len if name else '32, 48 or 64'})")
    raw = secret if secret is not None else os.urandom(n)
    if len(raw) != n:
        raise UsageError(f"dhchap secret must be {n} bytes, got {len(raw)}")
    if name is None:
        return DhchapKey(0, raw)
    return DhchapKey(hmac, hmaclib.new(raw, nqn.encode() + b"NVMe-over-Fabrics", name).digest())


def parse_dhchap_key(text: str) -> DhchapKey:
    """Check a `DHHC-1:` secret the way the kernel does (format, hash id, length, CRC)."""
    m = _RE.match(text.strip())
    if not m:
        raise UsageError("not a DH-HMAC-CHAP secret: expected DHHC-1:<hh>:<base64>: (as `nvme gen-dhchap-key` prints)")
    hh = int(m.group(1), 16)
    if hh not in HASHES:
        raise UsageError(f"DH-HMAC-CHAP secret names unknown hash {m.group(1)} (00-03)")
    try:
        blob = base64.b64decode(m.group(2), validate=True)
    except ValueError as e:
        raise UsageError(f"DH-HMAC-CHAP secret is not valid base64: {e}") from e
    key, crc = blob[:-4], blob[-4:]
    if len(key) not in (32, 48, 64):
        raise UsageError(f"DH-HMAC-CHAP secret holds {len(key)} key bytes; expected 32, 48 or 64")
    if zlib.crc32(key).to_bytes(4, "little") != crc:
        raise UsageError("DH-HMAC-CHAP secret fails its CRC-32 check (mistyped or truncated)")
    return DhchapKey(hh, key)

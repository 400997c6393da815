"""The one verification routine: every transport's bytes pass through `StreamVerifier`.

Digests are written `blake3:<64 lowercase hex>` everywhere (manifests, S3 keys, cache paths,
HTTP ETags). A blob is accepted only when both its size and its BLAKE3 digest match the signed
manifest; nothing is trusted because of where it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import blake3

from pifarm.errors import IntegrityError, UsageError

DIGEST_RE = re.compile(r"^blake3:([0-9a-f]{64})\Z")
CHUNK = 1 << 20  # 1 MiB: large enough to amortise syscalls, small enough for a Pi's RAM


def digest_hex(digest: str) -> str:
    """Return the hex part of a `blake3:<hex>` digest, refusing anything else."""
    m = DIGEST_RE.match(digest or "")
    if not m:
        raise UsageError(f"not a pifarm digest: {digest!r} (expected 'blake3:<64 lowercase hex>')")
    return m.group(1)


def make_digest(hexdigest: str) -> str:
    return f"blake3:{hexdigest}"


@dataclass(frozen=True)
class BlobRef:
    """What a manifest promises about one blob: its digest and exact size."""

    digest: str
    size: int

    def __post_init__(self) -> None:
        digest_hex(self.digest)
        if not isinstance(self.size, int) or self.size < 0:
            raise UsageError(f"blob size must be a non-negative integer, got {self.size!r}")

    @property
    def hex(self) -> str:
        return digest_hex(self.digest)


class StreamVerifier:
    """Hash bytes as they stream in; `finish()` raises IntegrityError unless size and digest match.

    `update` refuses to run past the promised size, so a hostile source cannot fill a disk.
    """

    def __init__(self, ref: BlobRef, source: str = ""):
        self.ref = ref
        self.source = source
        self._h = blake3.blake3(max_threads=blake3.blake3.AUTO) if ref.size >= 8 * CHUNK else blake3.blake3()
        self.received = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if self.received + n > self.ref.size:
            raise IntegrityError(
                f"blob {self.ref.digest} from {self.source or 'source'}: more than the "
                f"{self.ref.size} bytes the manifest promises"
            )
        self._h.update(data)
        self.received += n

    def finish(self) -> None:
        where = f" from {self.source}" if self.source else ""
        if self.received != self.ref.size:
            raise IntegrityError(
                f"blob {self.ref.digest}{where}: got {self.received} bytes, manifest says {self.ref.size}"
            )
        got = make_digest(self._h.hexdigest())
        if got != self.ref.digest:
            raise IntegrityError(f"blob {self.ref.digest}{where}: content hashes to {got} (corrupt or tampered)")


def digest_bytes(data: bytes) -> str:
    return make_digest(blake3.blake3(data).hexdigest())


def digest_file(path: str | os.PathLike) -> tuple[str, int]:
    """(digest, size) of a file, hashed with all cores (blake3 mmaps it)."""
    p = Path(path)
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if p.stat().st_size:
        h.update_mmap(p)
    return make_digest(h.hexdigest()), p.stat().st_size


def verify_file(path: str | os.PathLike, ref: BlobRef, source: str = "") -> None:
    """Re-hash a file at rest (scrub, load-time check) with the same rules as a stream."""
    where = source or str(path)
    size = Path(path).stat().st_size
    if size != ref.size:
        raise IntegrityError(f"blob {ref.digest} at {where}: {size} bytes on disk, manifest says {ref.size}")
    got, _ = digest_file(path)
    if got != ref.digest:
        raise IntegrityError(f"blob {ref.digest} at {where}: content hashes to {got} (corrupt or tampered)")

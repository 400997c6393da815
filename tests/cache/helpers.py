"""Helpers for node-side tests: signed documents built with a real key, and an in-memory source.

`MemSource` exists for speed only: the same `Source` contract runs against the real HTTP
aggregator and a real SeaweedFS in tests/initiator.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Iterator

from pifarm.errors import SourceError
from pifarm.signed.integrity import BlobRef, digest_bytes
from pifarm.signed.manifest import manifest_digest
from pifarm.signed.signing import SigningKey
from pifarm.signed.snapshot import iso, utcnow


class MemSource:
    def __init__(self, blobs: dict[str, bytes], name: str = "mem", chunk: int = 64 * 1024,
                 corrupt: bool = False, fail_at: int | None = None):
        self.blobs, self.name, self.chunk = blobs, name, chunk
        self.corrupt, self.fail_at = corrupt, fail_at
        self.requests: list[tuple[str, int]] = []
        self.sent = 0

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        self.requests.append((ref.digest, start))
        data = self.blobs.get(ref.digest)
        if data is None:
            raise SourceError(f"{self.name} has no {ref.digest}", self.name)
        if self.corrupt:
            b = bytearray(data)
            b[len(b) // 2] ^= 0x01  # one flipped bit
            data = bytes(b)
        for i in range(start, len(data), self.chunk):
            if self.fail_at is not None and i >= self.fail_at:
                raise SourceError(f"{self.name}: connection reset at byte {i}", self.name)
            piece = data[i:i + self.chunk]
            self.sent += len(piece)
            yield piece

    def close(self) -> None:
        pass


def blob(data: bytes) -> BlobRef:
    return BlobRef(digest_bytes(data), len(data))


def manifest_doc(key: SigningKey, name: str, version: int, files: dict[str, bytes], fmt: str = "raw") -> dict:
    body = {
        "type": "manifest", "name": name, "version": version, "format": fmt,
        "files": [{"path": p, "size": len(d), "digest": digest_bytes(d)} for p, d in files.items()],
        "tensors": {"inputs": [], "outputs": []}, "created": iso(utcnow()), "labels": {},
    }
    return key.sign(body)


def snapshot_doc(key: SigningKey, revision: int, models: dict[str, dict[str, dict]],
                 expires_in: timedelta = timedelta(days=1)) -> dict:
    """models: {name: {"stable": manifest_doc, "canary": manifest_doc (optional)}}."""
    body_models = {}
    for name, chans in models.items():
        ptrs = {c: {"version": d["signed"]["version"], "manifest_digest": manifest_digest(d["signed"])}
                for c, d in chans.items()}
        versions = sorted({(p["version"], p["manifest_digest"]) for p in ptrs.values()})
        body_models[name] = {"channels": ptrs,
                             "versions": [{"version": v, "manifest_digest": m} for v, m in versions]}
    body = {"type": "snapshot", "revision": revision, "expires": iso(utcnow() + expires_in), "models": body_models}
    return key.sign(body)

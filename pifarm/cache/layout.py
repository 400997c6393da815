"""On-disk layout of a node's model cache (shared contract of cache, initiator and inference).

    <root>/blobs/blake3/<hex>                 verified blobs, read-only (0444)
    <root>/tmp/                               installs in progress (exclusive-create temp files)
    <root>/manifests/<name>/<version>.json    the signed manifest document, as received
    <root>/refs/<name>/active|previous|prefetched
                                              JSON {"version": N, "manifest_digest": "blake3:…"}

Refs and manifests are replaced with os.replace, so a reader sees the old or the new file,
never a partial one. The inference server reads this layout and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pifarm.errors import IntegrityError, NotFound
from pifarm.signed.integrity import digest_hex
from pifarm.signed.manifest import check_name

REF_NAMES = ("active", "previous", "prefetched")


@dataclass(frozen=True)
class RefValue:
    version: int
    manifest_digest: str

    def to_json(self) -> dict:
        return {"version": self.version, "manifest_digest": self.manifest_digest}


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "blake3"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def blob(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def manifest(self, name: str, version: int) -> Path:
        return self.root / "manifests" / check_name(name) / f"{int(version)}.json"

    def ref(self, name: str, which: str) -> Path:
        if which not in REF_NAMES:
            raise ValueError(f"unknown ref {which!r}")
        return self.root / "refs" / check_name(name) / which

    def models(self) -> list[str]:
        d = self.root / "refs"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def read_ref(self, name: str, which: str = "active") -> RefValue | None:
        p = self.ref(name, which)
        try:
            d = json.loads(p.read_text())
            v = RefValue(int(d["version"]), str(d["manifest_digest"]))
            digest_hex(v.manifest_digest)
            return v
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"ref {p} is malformed: {e}") from e

    def require_ref(self, name: str, which: str = "active") -> RefValue:
        v = self.read_ref(name, which)
        if v is None:
            raise NotFound(f"model {name} has no {which} version in cache {self.root}; pull it first")
        return v

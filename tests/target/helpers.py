"""Real signed manifests and blob stores in tmp_path for the target tests."""

from __future__ import annotations

import os
from pathlib import Path

from pifarm.signed.integrity import digest_bytes, digest_hex
from pifarm.signed.manifest import FileEntry, Manifest
from pifarm.signed.signing import SigningKey


def make_store(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write blobs under root/store/blobs/blake3/<hex> (the fs store layout); {path: digest}."""
    out = {}
    for path, data in files.items():
        d = digest_bytes(data)
        p = blob_path_in(root)(d)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[path] = d
    return out


def blob_path_in(root: Path):
    return lambda digest: root / "store" / "blobs" / "blake3" / digest_hex(digest)


def signed_manifest(key: SigningKey, name: str, version: int, files: dict[str, bytes]) -> dict:
    m = Manifest(name=name, version=version, format="raw",
                 files=tuple(FileEntry(p, len(b), digest_bytes(b)) for p, b in files.items()),
                 created="2026-11-27T10:00:00Z")
    return key.sign(m.to_json())


def random_files(n: int, size: int, seed: int = 0) -> dict[str, bytes]:
    import random

    r = random.Random(seed)
    return {f"f{i}.bin": r.randbytes(size + i) for i in range(n)}


__all__ = ["make_store", "blob_path_in", "signed_manifest", "random_files", "os"]

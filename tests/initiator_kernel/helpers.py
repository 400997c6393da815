"""Signed model volumes in tmp_path for the nvme-kernel source tests (host side and in the VM)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import FileEntry, Manifest, manifest_digest
from pifarm.signed.signing import SigningKey, TrustedKeys
from pifarm.volume.format import VolumeInfo, manifest_body, write_volume


@dataclass
class BuiltVolume:
    path: Path
    document: dict
    files: dict[str, bytes]
    info: VolumeInfo

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_json(manifest_body(self.document))

    @property
    def digest(self) -> str:
        return manifest_digest(manifest_body(self.document))

    def blob(self, path: str) -> bytes:
        return self.files[path]


def model_files(seed: int, sizes: tuple[int, ...] = (1, 4095, 4096, 300_000, 1_048_577)) -> dict[str, bytes]:
    """Blobs whose sizes straddle the 4 KiB blocks and the 1 MiB read chunk."""
    r = random.Random(seed)
    return {f"part{i}.bin": r.randbytes(n) for i, n in enumerate(sizes)}


def build_volume(out: Path, key: SigningKey, name: str, version: int, files: dict[str, bytes]) -> BuiltVolume:
    m = Manifest(name=name, version=version, format="raw",
                 files=tuple(FileEntry(p, len(b), digest_bytes(b)) for p, b in files.items()),
                 created="2026-11-27T10:00:00Z")
    doc = key.sign(m.to_json())
    by_digest = {digest_bytes(b): b for b in files.values()}
    info = write_volume(out, doc, lambda d: [by_digest[d]])
    return BuiltVolume(Path(out), doc, files, info)


def trusted(key: SigningKey) -> TrustedKeys:
    return TrustedKeys([key.public])


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))

"""The model volume format: one immutable, self-describing file per served model version.

The aggregator writes it (and exports it as an NVMe namespace); nodes read it from a block
device, over userspace NVMe/TCP or from a plain file. A reader needs nothing but the bytes.

    offset 0      superblock, 4096 bytes, little-endian:
                    0  magic            8s   b"PIFARMVL"
                    8  format version   u16  1
                   10  flags            u16  0 (reserved)
                   12  block size       u32  4096
                   16  volume size      u64  whole file, a multiple of 4096
                   24  TOC offset       u64  4096
                   32  TOC length       u64  exact bytes (no padding)
                   40  TOC digest       32s  raw BLAKE3 of the TOC bytes
                   72  manifest digest  32s  raw BLAKE3 of the canonical signed manifest body
                  104  header digest    32s  raw BLAKE3 of bytes 0..104 (catches a torn superblock)
                  136  zeros to 4096
    offset 4096   TOC: canonical JSON, zero padded to the next 4 KiB
                    {"type": "volume-toc", "format": 1, "manifest_digest": "blake3:…",
                     "manifest": <the signed manifest document, exactly as the registry stores it>,
                     "blobs": [{"digest": "blake3:…", "offset": N, "size": N}, …]}
    then          each distinct blob once, at a 4 KiB aligned offset, zero padded

The TOC digest is checked on every open; blob bytes are checked by callers with
`pifarm.signed.integrity` (the one verification routine), the manifest signature by callers
with `TrustedKeys`. Files sharing a digest share one extent.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import blake3

from pifarm.errors import IntegrityError, NotFound, UsageError
from pifarm.signed.canonical import canonical_bytes
from pifarm.durable import fsync_dir
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier, digest_hex, make_digest
from pifarm.signed.manifest import Manifest, manifest_digest

__all__ = [
    "BLOCK", "MAGIC", "FORMAT_VERSION", "MAX_TOC", "Superblock", "VolumeInfo", "VolumeReader",
    "write_volume", "align", "manifest_body",
]

BLOCK = 4096
MAGIC = b"PIFARMVL"
FORMAT_VERSION = 1
MAX_TOC = 64 << 20  # a TOC is a few KiB; the bound keeps a hostile device from exhausting RAM
_HEAD = struct.Struct("<8sHHIQQQ32s32s")  # 104 bytes, followed by the header digest
_HEAD_DIGEST_END = _HEAD.size + 32


def align(n: int, block: int = BLOCK) -> int:
    return (n + block - 1) // block * block


def manifest_body(document: dict[str, Any]) -> dict[str, Any]:
    """The manifest body inside a signed document (or the document itself if unsigned)."""
    if isinstance(document, dict) and isinstance(document.get("signed"), dict):
        return document["signed"]
    return document


@dataclass(frozen=True)
class Superblock:
    format_version: int
    volume_size: int
    toc_offset: int
    toc_length: int
    toc_digest: str
    manifest_digest: str

    def pack(self) -> bytes:
        head = _HEAD.pack(
            MAGIC, self.format_version, 0, BLOCK, self.volume_size, self.toc_offset, self.toc_length,
            bytes.fromhex(digest_hex(self.toc_digest)), bytes.fromhex(digest_hex(self.manifest_digest)),
        )
        head += blake3.blake3(head).digest()
        return head.ljust(BLOCK, b"\0")

    @classmethod
    def unpack(cls, data: bytes, where: str = "volume") -> "Superblock":
        if len(data) < _HEAD_DIGEST_END:
            raise IntegrityError(f"{where}: too short for a pifarm volume superblock ({len(data)} bytes; not a pifarm volume)")
        magic, ver, _flags, block, vsize, toff, tlen, tdig, mdig = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise IntegrityError(f"{where}: not a pifarm volume (magic {magic!r}, expected {MAGIC!r})")
        if blake3.blake3(data[: _HEAD.size]).digest() != data[_HEAD.size:_HEAD_DIGEST_END]:
            raise IntegrityError(f"{where}: superblock header digest mismatch (torn or corrupt superblock)")
        if ver != FORMAT_VERSION:
            raise IntegrityError(f"{where}: volume format version {ver} is not supported (this pifarm reads {FORMAT_VERSION})")
        if block != BLOCK or vsize % BLOCK:
            raise IntegrityError(f"{where}: bad block size {block} or volume size {vsize}")
        if toff < BLOCK or toff % BLOCK or tlen <= 0 or tlen > MAX_TOC or toff + tlen > vsize:
            raise IntegrityError(f"{where}: table of contents at {toff}+{tlen} lies outside the {vsize}-byte volume")
        return cls(ver, vsize, toff, tlen, make_digest(tdig.hex()), make_digest(mdig.hex()))


@dataclass(frozen=True)
class VolumeInfo:
    """What `write_volume` produced (and what a reader learns from the superblock + TOC)."""

    path: Path | None
    name: str
    version: int
    manifest_digest: str
    size: int
    toc_length: int
    blobs: int

    @property
    def namespace_uuid(self) -> uuid.UUID:
        from pifarm.signed.manifest import namespace_uuid

        return namespace_uuid(self.manifest_digest)


def _layout(manifest: Manifest) -> list[tuple[str, int]]:
    """Distinct blobs in manifest order: [(digest, size)]."""
    seen: dict[str, int] = {}
    for f in manifest.files:
        if f.digest in seen and seen[f.digest] != f.size:
            raise UsageError(f"manifest for {manifest.name} gives digest {f.digest} two sizes")
        seen.setdefault(f.digest, f.size)
    return list(seen.items())


def _toc_bytes(document: dict[str, Any], mdigest: str, blobs: list[tuple[str, int]]) -> tuple[bytes, list[int]]:
    """TOC bytes and blob offsets. Offsets depend on the TOC's length, which depends on the
    offsets' digit counts: iterate to the fixed point (two or three rounds at most)."""
    start = 2 * BLOCK
    for _ in range(16):
        offsets, pos = [], start
        for _d, size in blobs:
            offsets.append(pos)
            pos = align(pos + size)
        toc = canonical_bytes({
            "type": "volume-toc", "format": FORMAT_VERSION, "manifest_digest": mdigest, "manifest": document,
            "blobs": [{"digest": d, "offset": o, "size": s} for (d, s), o in zip(blobs, offsets)],
        })
        need = align(BLOCK + len(toc))
        if need == start:
            return toc, offsets
        start = max(need, start)
    raise AssertionError("volume TOC layout did not converge")  # unreachable: start only grows


def _chunks(src: "Path | str | Iterable[bytes]") -> Iterator[bytes]:
    if isinstance(src, (str, Path)):
        with open(src, "rb") as s:
            while chunk := s.read(CHUNK):
                yield chunk
    else:
        yield from src


def write_volume(out_path: str | os.PathLike, manifest_document: dict[str, Any],
                 blob_path: Callable[[str], "Path | Iterable[bytes]"]) -> VolumeInfo:
    """Write the volume for one manifest, atomically (temp + fsync + rename + fsync dir).

    `blob_path(digest)` gives a local file or an iterable of the blob's bytes (e.g. from S3).

    Every blob is verified while it is copied, so a corrupt store never yields a volume.
    """
    out = Path(out_path)
    manifest = Manifest.from_json(manifest_body(manifest_document))
    mdigest = manifest_digest(manifest_body(manifest_document))
    blobs = _layout(manifest)
    toc, offsets = _toc_bytes(manifest_document, mdigest, blobs)
    size = align(offsets[-1] + blobs[-1][1]) if blobs else align(BLOCK + len(toc))
    sb = Superblock(FORMAT_VERSION, size, BLOCK, len(toc), make_digest(blake3.blake3(toc).hexdigest()), mdigest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as f:
            f.write(sb.pack())
            f.write(toc)
            for (digest, bsize), off in zip(blobs, offsets):
                f.seek(off)
                src = blob_path(digest)
                v = StreamVerifier(BlobRef(digest, bsize), source=str(src) if isinstance(src, (str, Path)) else "store")
                try:
                    for chunk in _chunks(src):
                        v.update(chunk)
                        f.write(chunk)
                except FileNotFoundError as e:
                    raise NotFound(f"blob {digest} of {manifest.name} v{manifest.version} missing at {src}") from e
                v.finish()
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return VolumeInfo(out, manifest.name, manifest.version, mdigest, size, len(toc), len(blobs))


class VolumeReader:
    """Parse a volume through `read_at(offset, length) -> bytes` (a file, a block device, NVMe/TCP).

    Opening reads the superblock and the TOC and checks the TOC digest; nothing else is read.
    """

    def __init__(self, read_at: Callable[[int, int], bytes], where: str = "volume"):
        self._read_at = read_at
        self.where = where
        self.superblock = Superblock.unpack(bytes(read_at(0, BLOCK)), where)
        sb = self.superblock
        toc = self._read(sb.toc_offset, sb.toc_length)
        got = make_digest(blake3.blake3(toc).hexdigest())
        if got != sb.toc_digest:
            raise IntegrityError(f"{where}: table of contents hashes to {got}, superblock says {sb.toc_digest} (corrupt volume)")
        try:
            doc = json.loads(toc)
        except ValueError as e:
            raise IntegrityError(f"{where}: table of contents is not JSON: {e}") from e
        self._parse(doc)

    def _read(self, offset: int, length: int) -> bytes:
        data = bytes(self._read_at(offset, length))
        if len(data) != length:
            raise IntegrityError(f"{self.where}: short read at {offset} ({len(data)} of {length} bytes; truncated volume?)")
        return data

    def _parse(self, doc: Any) -> None:
        w, sb = self.where, self.superblock
        if not isinstance(doc, dict) or doc.get("type") != "volume-toc" or doc.get("format") != FORMAT_VERSION:
            raise IntegrityError(f"{w}: table of contents has the wrong type or format")
        document = doc.get("manifest")
        body = manifest_body(document)
        if manifest_digest(body) != sb.manifest_digest or doc.get("manifest_digest") != sb.manifest_digest:
            raise IntegrityError(f"{w}: manifest in the table of contents does not match the superblock digest")
        self.manifest = Manifest.from_json(body)
        self.manifest_document: dict[str, Any] = document
        extents: dict[str, tuple[int, int]] = {}
        data_start = align(sb.toc_offset + sb.toc_length)
        last_end = data_start
        for b in doc.get("blobs") or []:
            try:
                ref = BlobRef(b["digest"], b["size"])
                off = b["offset"]
            except (KeyError, TypeError) as e:
                raise IntegrityError(f"{w}: malformed blob entry {b!r}") from e
            except UsageError as e:
                raise IntegrityError(f"{w}: {e}") from e
            if (not isinstance(off, int) or off % BLOCK or off < last_end or off + ref.size > sb.volume_size
                    or ref.digest in extents):
                raise IntegrityError(f"{w}: blob {ref.digest} extent {off}+{ref.size} is misplaced or duplicated")
            extents[ref.digest] = (off, ref.size)
            last_end = align(off + ref.size)
        self._extents = extents
        entries = []
        for f in self.manifest.files:
            ext = extents.get(f.digest)
            if ext is None or ext[1] != f.size:
                raise IntegrityError(f"{w}: manifest file {f.path} ({f.digest}) has no matching blob in the volume")
            entries.append((f.path, f.digest, ext[0], ext[1]))
        self.entries: list[tuple[str, str, int, int]] = entries

    @property
    def manifest_digest(self) -> str:
        return self.superblock.manifest_digest

    def extent(self, digest: str) -> tuple[int, int]:
        try:
            return self._extents[digest]
        except KeyError:
            raise NotFound(f"{self.where}: blob {digest} is not in this volume") from None

    def chunks(self, digest: str, start: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
        """The blob's bytes from `start` in bounded reads (unverified: feed a StreamVerifier)."""
        off, size = self.extent(digest)
        pos = start
        while pos < size:
            n = min(chunk, size - pos)
            yield self._read(off + pos, n)
            pos += n

    def verify_blob(self, digest: str) -> None:
        off, size = self.extent(digest)
        v = StreamVerifier(BlobRef(digest, size), source=f"{self.where}@{off}")
        for c in self.chunks(digest):
            v.update(c)
        v.finish()

    def info(self) -> VolumeInfo:
        return VolumeInfo(None, self.manifest.name, self.manifest.version, self.manifest_digest,
                          self.superblock.volume_size, self.superblock.toc_length, len(self._extents))

    # -- files ---------------------------------------------------------------------------
    _fd: int | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "VolumeReader":
        """Open a volume file or block device; close() (or `with`) releases it."""
        p = str(path)
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError as e:
            raise NotFound(f"volume {p} does not exist") from e
        except OSError as e:
            raise UsageError(f"cannot open volume {p}: {e.strerror}") from e
        try:
            reader = cls(lambda off, n: os.pread(fd, n, off), where=p)
        except BaseException:
            os.close(fd)
            raise
        reader._fd = fd
        return reader

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "VolumeReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

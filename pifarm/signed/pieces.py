"""Per-piece digests of a blob, so bytes from a peer are checked piece by piece on arrival.

A manifest file entry may carry

    "pieces": {"size": 4194304, "digests": ["<64 hex>", ...]}

piece i covers bytes [i*size, min((i+1)*size, file size)) and hashes (BLAKE3) to digests[i].
Each piece is checked with the one verification routine (`StreamVerifier` over the piece's own
`BlobRef`), and the whole file still is when the cache installs it. The field is optional:
manifests without it keep working with whole-blob sources only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import blake3

from pifarm.errors import IntegrityError, UsageError
from pifarm.signed.integrity import CHUNK, BlobRef, make_digest

PIECE_SIZE = 1 << 20  # the smallest piece a publish chooses: a peer can pass it on after ~0.1 s at 100 Mbit/s
TARGET_PIECES = 1024  # ... and larger pieces keep a big file to about this many digests (~70 KB of manifest)
MIN_PIECE, MAX_PIECE = 64 << 10, 64 << 20
MAX_PIECES = 1 << 16  # bounds a manifest: 4.6 MB of digests at most
HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class PieceTable:
    size: int  # bytes per piece (the last one may be shorter)
    digests: tuple[str, ...]  # lowercase hex, one per piece

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not MIN_PIECE <= self.size <= MAX_PIECE or self.size & (self.size - 1):
            raise UsageError(f"piece size must be a power of two from {MIN_PIECE} to {MAX_PIECE} bytes, got {self.size!r}")
        if len(self.digests) > MAX_PIECES or not all(isinstance(d, str) and HEX_RE.match(d) for d in self.digests):
            raise UsageError(f"pieces: at most {MAX_PIECES} digests of 64 lowercase hex characters")

    @property
    def count(self) -> int:
        return len(self.digests)

    def check_blob(self, size: int) -> None:
        """The table must cover exactly `size` bytes."""
        want = -(-size // self.size) if size else 0
        if want != self.count:
            raise UsageError(f"pieces: {self.count} digests of {self.size} bytes cannot cover {size} bytes (need {want})")

    def span(self, i: int, blob_size: int) -> tuple[int, int]:
        """(offset, length) of piece i."""
        off = i * self.size
        return off, min(self.size, blob_size - off)

    def ref(self, i: int, blob_size: int) -> BlobRef:
        return BlobRef(make_digest(self.digests[i]), self.span(i, blob_size)[1])

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "digests": list(self.digests)}

    @classmethod
    def from_json(cls, d: Any) -> "PieceTable":
        if not isinstance(d, dict) or not isinstance(d.get("digests"), list):
            raise IntegrityError("malformed pieces: expected {\"size\": N, \"digests\": [...]}")
        try:
            return cls(d.get("size"), tuple(d["digests"]))
        except UsageError as e:
            raise IntegrityError(f"malformed pieces: {e}") from e


def piece_size_for(size: int) -> int:
    """1 MiB, doubled until the file has at most TARGET_PIECES pieces (64 MiB at most)."""
    p = PIECE_SIZE
    while p < MAX_PIECE and size > p * TARGET_PIECES:
        p *= 2
    return p


def hash_file(path: str | os.PathLike, piece_size: int | None = None) -> tuple[str, int, PieceTable]:
    """(whole-file digest, size, piece table) in one pass over the file."""
    piece_size = piece_size or piece_size_for(os.stat(path).st_size)
    whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
    digests: list[str] = []
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            piece = blake3.blake3()
            got = 0
            while got < piece_size:
                buf = f.read(min(CHUNK * 4, piece_size - got))
                if not buf:
                    break
                piece.update(buf)
                whole.update(buf)
                got += len(buf)
            if got:
                digests.append(piece.hexdigest())
                size += got
            if got < piece_size:
                break
    return make_digest(whole.hexdigest()), size, PieceTable(piece_size, tuple(digests))

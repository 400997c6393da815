"""Pieces of blobs in flight on this node: written by the peer source, read by the piece server.

    <state_dir>/pieces/<hex>.data   the blob's bytes at their offsets (sparse until complete)
    <state_dir>/pieces/<hex>.have   indices of verified pieces, one per line, appended after the
                                    piece's bytes are written

A piece is marked held only after its bytes passed `StreamVerifier`; after a crash the pieces the
`.have` list names are checked once more on reopening, so one that never reached the disk (or a
torn append) costs that piece only. Once the cache holds the whole blob the files are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from pifarm.durable import start_writeback
from pifarm.errors import IntegrityError
from pifarm.signed.integrity import BlobRef, StreamVerifier
from pifarm.signed.pieces import PieceTable

log = logging.getLogger(__name__)


class PieceFile:
    """One blob's pieces on disk and which of them are verified (`have`, a bitmask)."""

    def __init__(self, store: "PieceStore", ref: BlobRef, table: PieceTable):
        self.store, self.ref, self.table = store, ref, table
        self.have = 0
        self.pending = 0  # pieces being fetched now (peers avoid asking the aggregator for them twice)
        self.users = 0
        self.lock = threading.Lock()
        self.data_path = store.dir / f"{ref.hex}.data"
        self.have_path = store.dir / f"{ref.hex}.have"
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self.fd).st_size != ref.size:
            os.ftruncate(self.fd, ref.size)
        self.resumed = self._reload()

    def _reload(self) -> int:
        """Re-check the pieces a previous run verified; keep the good ones."""
        try:
            lines = self.have_path.read_text().split()
        except FileNotFoundError:
            return 0
        good = 0
        for word in lines:
            if not word.isdigit() or int(word) >= self.table.count or self.has(int(word)):
                continue
            i = int(word)
            try:
                self.verify(i, self.read(i))
            except IntegrityError:
                continue
            self.have |= 1 << i
            good += 1
        # rewrite the list: only pieces that still verify
        with open(self.have_path, "w") as f:
            f.write("".join(f"{i}\n" for i in range(self.table.count) if self.has(i)))
            f.flush()
            os.fsync(f.fileno())
        return good

    def has(self, i: int) -> bool:
        return bool(self.have >> i & 1)

    @property
    def complete(self) -> bool:
        return self.have == (1 << self.table.count) - 1

    def verify(self, i: int, data: bytes) -> None:
        """The one verification routine, on the piece's own size and digest."""
        v = StreamVerifier(self.table.ref(i, self.ref.size), f"piece {i}")
        v.update(data)
        v.finish()

    def read(self, i: int, start: int = 0) -> bytes:
        off, n = self.table.span(i, self.ref.size)
        return os.pread(self.fd, n - start, off + start)

    def put(self, i: int, data: bytes) -> None:
        """Store a piece already verified by the caller: bytes to disk first, then the claim."""
        off, n = self.table.span(i, self.ref.size)
        assert len(data) == n
        done = 0
        while done < n:
            done += os.pwrite(self.fd, memoryview(data)[done:], off + done)
        # no fsync: the `.have` list is only a claim, re-verified on reopening (a piece lost in a
        # crash fails its digest there and is fetched again), so per-piece syncs would buy nothing;
        # but the write to disk starts now, so the cache's fsync of the whole blob finds little left
        start_writeback(self.fd, off, n)
        with self.lock:
            with open(self.have_path, "a") as f:
                f.write(f"{i}\n")
            self.have |= 1 << i

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def remove(self) -> None:
        self.close()
        for p in (self.data_path, self.have_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class PieceStore:
    """The open piece files of this node, by blob hex digest."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[str, PieceFile] = {}

    def acquire(self, ref: BlobRef, table: PieceTable) -> PieceFile:
        with self._lock:
            pf = self._open.get(ref.hex)
            if pf is None or pf.table != table:
                pf = self._open[ref.hex] = PieceFile(self, ref, table)
            pf.users += 1
            return pf

    def release(self, pf: PieceFile) -> None:
        with self._lock:
            pf.users -= 1

    def get(self, hexd: str) -> PieceFile | None:
        with self._lock:
            return self._open.get(hexd)

    def sweep(self, in_cache) -> None:
        """Drop the piece files of blobs the cache now holds (`in_cache(hex) -> bool`) and nobody uses."""
        with self._lock:
            for hexd, pf in list(self._open.items()):
                if pf.users == 0 and in_cache(hexd):
                    del self._open[hexd]
                    pf.remove()
            for p in self.dir.glob("*.data"):
                hexd = p.name[:-5]
                if hexd not in self._open and in_cache(hexd):
                    for q in (p, p.with_suffix(".have")):
                        with contextlib.suppress(FileNotFoundError):
                            q.unlink()

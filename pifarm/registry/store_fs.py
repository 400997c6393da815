"""The embedded filesystem store (default): the S3 key layout as files under one directory.

Every write goes to a process-unique temp file in the target directory, is fsynced, renamed into
place and the directory fsynced (documents through `pifarm.durable.atomic_write`, blobs while
they are verified), so a crash leaves the old file or the new one, plus at most a `.part`
leftover that `cleanup_temp` removes at the next start.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from pifarm.errors import NotFound
from pifarm.durable import atomic_write, fsync_dir
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier, digest_hex, make_digest
from pifarm.registry.store import BLOB_PREFIX, StoreUnavailable, blob_key

PART = ".part"


@contextmanager
def _mapped(what: str):
    """Turn OS failures into StoreUnavailable naming the path (disk gone, full, read-only)."""
    try:
        yield
    except OSError as e:
        raise StoreUnavailable(f"filesystem store: {what}: {e.strerror or e}", source="fs") from e


def read_range(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of an open file in CHUNK pieces (fewer when the file is shorter)."""
    f.seek(start)
    left = end - start
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        yield chunk


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # the directory itself is gone; cleanup_temp catches what is left when it is back


class FsStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = f"fs:{self.root}"
        with _mapped(f"cannot create {self.root}"):
            (self.root / BLOB_PREFIX).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = self.root / key
        # keys come from blob_key/manifest_key, which validate; this guards against future misuse
        if self.root.resolve() not in p.resolve().parents:
            raise ValueError(f"store key {key!r} escapes {self.root}")
        return p

    def _tmp(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.{uuid.uuid4().hex}{PART}")

    def check(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"filesystem store {self.root} is missing (unmounted or deleted?)", source="fs")
        probe = self.root / f".probe.{uuid.uuid4().hex}{PART}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreUnavailable(f"filesystem store {self.root} is not writable: {e.strerror or e}", source="fs") from e

    def has_blob(self, ref: BlobRef) -> bool:
        try:
            return self._path(blob_key(ref.digest)).stat().st_size == ref.size
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreUnavailable(f"filesystem store {self.root}: {e.strerror or e}", source="fs") from e

    def put_blob(self, ref: BlobRef, path: Path, *, consume: bool = False) -> None:
        final = self._path(blob_key(ref.digest))
        tmp = self._tmp(final)
        try:
            with _mapped(f"writing blob {ref.digest}"):
                if consume and os.stat(path).st_dev == os.stat(final.parent).st_dev:
                    os.replace(path, tmp)
                    v = StreamVerifier(ref, source=str(tmp))
                    with open(tmp, "rb") as f:
                        while chunk := f.read(CHUNK):
                            v.update(chunk)
                        # the upload was written without fsync: its data must be on disk before
                        # the rename makes it a blob (the store's start-up check sees only sizes,
                        # so a torn blob of the right length would stay)
                        os.fsync(f.fileno())
                    v.finish()
                else:
                    v = StreamVerifier(ref, source=str(path))
                    with open(path, "rb") as src, open(tmp, "xb") as dst:
                        while chunk := src.read(CHUNK):
                            v.update(chunk)
                            dst.write(chunk)
                        dst.flush()
                        os.fsync(dst.fileno())
                    v.finish()
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
                fsync_dir(final.parent)
        finally:
            _discard(tmp)

    def blob_size(self, digest: str) -> int:
        try:
            return self._path(blob_key(digest)).stat().st_size
        except FileNotFoundError as e:
            raise NotFound(f"blob {digest} is not in the store") from e

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        p = self._path(blob_key(digest))
        try:
            f = open(p, "rb")
        except FileNotFoundError as e:
            raise NotFound(f"blob {digest} is not in the store") from e
        with f:
            yield from read_range(f, start, end if end is not None else os.fstat(f.fileno()).st_size)

    def local_blob_path(self, digest: str) -> Path | None:
        return self._path(blob_key(digest))

    def delete_blob(self, digest: str) -> None:
        with _mapped(f"deleting blob {digest}"):
            self._path(blob_key(digest)).unlink(missing_ok=True)

    def list_blobs(self) -> list[str]:
        d = self.root / BLOB_PREFIX
        with _mapped(f"listing {d}"):
            names = [p.name for p in d.iterdir()] if d.is_dir() else []
        out = []
        for n in names:
            try:
                out.append(make_digest(n) if digest_hex(make_digest(n)) else n)
            except Exception:
                continue  # temp files and strangers are not blobs
        return sorted(out)

    def put_document(self, key: str, data: bytes) -> None:
        with _mapped(f"writing {key}"):
            atomic_write(self._path(key), data, suffix=PART)

    def get_document(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailable(f"filesystem store: reading {key}: {e.strerror or e}", source="fs") from e

    def delete_document(self, key: str) -> None:
        with _mapped(f"deleting {key}"):
            self._path(key).unlink(missing_ok=True)

    def list_documents(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        with _mapped(f"listing {prefix}"):
            return sorted(
                str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(PART)
            )

    def cleanup_temp(self) -> int:
        """Remove `.part` leftovers of writes that a crash interrupted; return how many."""
        n = 0
        if not self.root.is_dir():
            return 0
        for p in self.root.rglob(f"*{PART}"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def close(self) -> None:
        pass


__all__ = ["FsStore", "fsync_dir", "read_range"]

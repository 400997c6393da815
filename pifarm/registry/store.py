"""The store contract shared by the filesystem and S3 stores.

Both use the key layout of `pifarm.s3.layout` (blobs/blake3/<hex>, models/<name>/<version>.json,
snapshot.json), so a node can work from S3 (or a copy of the directory) alone while the
aggregator is down. Every store failure surfaces as `StoreUnavailable`, which
turns the registry read-only until a reachability check passes again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Protocol

from pifarm.errors import SourceError
from pifarm.registry.settings import StoreSettings
from pifarm.s3.layout import BLOB_PREFIX, MODEL_PREFIX, SNAPSHOT_KEY, blob_key, manifest_key
from pifarm.signed.integrity import BlobRef


class StoreUnavailable(SourceError):
    """The store could not be reached or refused an operation (the registry goes read-only)."""


class Store(Protocol):
    #: "fs:/path" or "s3://bucket/prefix" for messages and /health
    location: str

    def check(self) -> None:
        """Raise StoreUnavailable unless the store can be written right now."""

    def has_blob(self, ref: BlobRef) -> bool:
        """True when a blob with this digest and exactly this size is stored."""

    def put_blob(self, ref: BlobRef, path: Path) -> None:
        """Store a local file already verified against `ref`; verify the stored copy."""

    def blob_size(self, digest: str) -> int:
        """Size of a stored blob; NotFound when absent."""

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end) of a stored blob."""

    def local_blob_path(self, digest: str) -> Path | None:
        """A local file path for the blob when the store has one (fs), else None."""

    def delete_blob(self, digest: str) -> None: ...

    def list_blobs(self) -> list[str]:
        """Digests of every stored blob."""

    def put_document(self, key: str, data: bytes) -> None:
        """Write a small document atomically (readers see the old or the new bytes)."""

    def get_document(self, key: str) -> bytes | None: ...

    def delete_document(self, key: str) -> None: ...

    def list_documents(self, prefix: str) -> list[str]: ...

    def close(self) -> None: ...


def open_store(settings: StoreSettings, data_dir: str | os.PathLike) -> Store:
    """The store named by `[store] url`: the filesystem store by default, S3 for s3:// URLs."""
    if settings.kind == "s3":
        from pifarm.registry.store_s3 import S3Store

        return S3Store.from_settings(settings)
    from pifarm.registry.store_fs import FsStore

    url = settings.url
    root = Path(url[len("file://"):]) if url.startswith("file://") else Path(data_dir) / "store"
    return FsStore(root)


__all__ = ["BLOB_PREFIX", "MODEL_PREFIX", "SNAPSHOT_KEY", "Store", "StoreUnavailable", "blob_key", "manifest_key",
           "open_store"]

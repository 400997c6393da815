"""Keep one volume file per served model version in the volume directory.

`VolumeBuilder(registry, volume_dir).sync()` builds what is missing (or stale), removes volumes of
versions no longer served, and returns the exports for the reconciler. Removing a file that an
enabled namespace still uses is safe: nvmet holds it open until the namespace is disabled.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from pifarm.errors import IntegrityError, PifarmError
from pifarm.volume.format import VolumeReader, write_volume
from pifarm.target.spec import Export

__all__ = ["VolumeBuilder", "sync_volumes", "volume_name", "RegistryLike"]

log = logging.getLogger(__name__)
SUFFIX = ".vol"


class RegistryLike(Protocol):
    def served_versions(self) -> list[Any]: ...  # items with .name .version .manifest_digest
    def manifest_document(self, name: str, version: int) -> dict[str, Any]: ...
    def blob_path_or_stream(self, digest: str) -> Any: ...


def volume_name(name: str, version: int) -> str:
    return f"{name}-v{version}{SUFFIX}"


def _current(path: Path, digest: str) -> bool:
    try:
        with VolumeReader.from_file(path) as r:
            return r.manifest_digest == digest
    except PifarmError:
        return False


def sync_volumes(items: Iterable[tuple[str, int, str, Callable[[], dict[str, Any]]]],
                 blob_source: Callable[[str], Any], volume_dir: str | os.PathLike,
                 progress: Callable[[str], None] | None = None) -> list[Export]:
    """Plain-data core: items are (name, version, manifest_digest, load_manifest_document)."""
    d = Path(volume_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # the daemon and `pifarm volume build` may overlap
        exports, keep = [], set()
        for name, version, digest, load in items:
            path = d / volume_name(name, version)
            keep.add(path.name)
            if not _current(path, digest):
                info = write_volume(path, load(), blob_source)
                if info.manifest_digest != digest:
                    path.unlink(missing_ok=True)
                    raise IntegrityError(f"manifest of {name} v{version} hashes to {info.manifest_digest}, "
                                         f"registry says {digest}")
                log.info("built volume %s (%d bytes)", path, info.size)
                if progress:
                    progress(f"built {path.name} ({info.size} bytes)")
            exports.append(Export(name, version, digest, str(path)))
        for p in d.iterdir():
            if p.name.endswith(SUFFIX) and p.name not in keep:
                p.unlink(missing_ok=True)
                log.info("removed volume %s (version no longer served)", p)
                if progress:
                    progress(f"removed {p.name}")
        return exports


class VolumeBuilder:
    def __init__(self, registry: RegistryLike, volume_dir: str | os.PathLike):
        self.registry = registry
        self.volume_dir = Path(volume_dir)

    def _items(self, only: tuple[str, int] | None = None):
        for sv in self.registry.served_versions():
            if only and (sv.name, sv.version) != only:
                continue
            yield (sv.name, sv.version, sv.manifest_digest,
                   lambda n=sv.name, v=sv.version: self.registry.manifest_document(n, v))

    def sync(self, progress: Callable[[str], None] | None = None) -> list[Export]:
        exports = sync_volumes(self._items(), self.registry.blob_path_or_stream, self.volume_dir, progress)
        ids = {(sv.name, sv.version): getattr(sv, "nsid", None) for sv in self.registry.served_versions()}
        return [dataclasses.replace(e, nsid=ids.get((e.name, e.version))) for e in exports]

    def build(self, name: str, version: int) -> Export:
        """Build (or confirm) one version's volume without touching the others."""
        from pifarm.errors import NotFound

        items = list(self._items((name, version)))
        if not items:
            raise NotFound(f"{name} v{version} is not a served version (retired or never published)")
        n, v, digest, load = items[0]
        path = self.volume_dir / volume_name(n, v)
        self.volume_dir.mkdir(parents=True, exist_ok=True)
        if not _current(path, digest):
            write_volume(path, load(), self.registry.blob_path_or_stream)
        return Export(n, v, digest, str(path))


def repair_volume(registry: RegistryLike, path: str | os.PathLike) -> None:
    """Rebuild a damaged volume from the store (every blob verified) into the *same* file: the
    kernel target and the userspace target hold it open, so it must keep its inode."""
    from pifarm.errors import NotFound
    from pifarm.target.volume_scrub import rewrite_in_place

    p = Path(path)
    for sv in registry.served_versions():
        if volume_name(sv.name, sv.version) == p.name:
            fresh = p.with_name(f".{p.name}.repair")
            try:
                write_volume(fresh, registry.manifest_document(sv.name, sv.version), registry.blob_path_or_stream)
                rewrite_in_place(p, fresh)
            finally:
                fresh.unlink(missing_ok=True)
            return
    raise NotFound(f"{p.name} is not the volume of a served version")

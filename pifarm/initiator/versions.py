"""Bring one model version into the cache: signed manifest, then blobs, then refs.

Shared by `pifarm pull` and the watcher. Order matters for crash safety: the manifest is stored,
`prefetched` names the version while its blobs arrive (so eviction leaves them alone), and only
a fully verified version becomes `active` (the old one becoming `previous`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pifarm.cache.layout import RefValue
from pifarm.cache.source import Source
from pifarm.cache.store import Cache, ProgressFn
from pifarm.errors import IntegrityError, NotFound, PifarmError, SourceError, UsageError
from pifarm.client.http import AggregatorClient
from pifarm.initiator.s3_source import S3Documents
from pifarm.signed.manifest import Manifest, manifest_digest
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import Snapshot, VersionPointer, verify_manifest, verify_snapshot

log = logging.getLogger(__name__)


class Documents:
    """Signed documents from the aggregator first, S3 second."""

    def __init__(self, aggregator: AggregatorClient | None = None, s3: S3Documents | None = None):
        if aggregator is None and s3 is None:
            raise SourceError("no registry configured: pass --registry URL (http(s):// or s3://bucket/prefix)")
        self.aggregator, self.s3 = aggregator, s3

    def snapshot(self, trusted: TrustedKeys, highest_seen: int = -1) -> tuple[Snapshot, str]:
        errors = []
        if self.aggregator is not None:
            try:
                poll = self.aggregator.poll(since=-1, wait=0)
                if poll.document is not None:
                    return verify_snapshot(poll.document, trusted, highest_seen), "http"
                errors.append("http: no snapshot offered")
            except SourceError as e:
                errors.append(f"http: {e}")
        if self.s3 is not None:
            try:
                return verify_snapshot(self.s3.snapshot(), trusted, highest_seen), "s3"
            except SourceError as e:
                errors.append(f"s3: {e}")
        raise SourceError("cannot read the registry snapshot: " + "; ".join(errors))

    def manifest(self, name: str, version: int) -> Any:
        errors = []
        for where, get in (("http", self.aggregator), ("s3", self.s3)):
            if get is None:
                continue
            try:
                return get.manifest(name, version)
            except (SourceError, NotFound) as e:
                errors.append(f"{where}: {e}")
        raise SourceError(f"cannot fetch the manifest of {name} v{version}: " + "; ".join(errors))

    def close(self) -> None:
        if self.aggregator is not None:
            self.aggregator.close()


@dataclass(frozen=True)
class Installed:
    manifest: Manifest
    value: RefValue
    sources: tuple[str, ...]  # sources that served its blobs ("cache" when all were present)
    previous: RefValue | None
    fetched: int

    @property
    def source(self) -> str:
        return ",".join(self.sources)


def pick(snapshot: Snapshot, name: str, channel: str | None = None, version: int | None = None) -> VersionPointer:
    """Resolve NAME:CHANNEL / NAME@VERSION against a verified snapshot."""
    entry = snapshot.models.get(name)
    if entry is None:
        raise NotFound(f"model {name} is not in the registry (revision {snapshot.revision})")
    if version is not None:
        for v in entry.versions:
            if v.version == version:
                return v
        raise NotFound(f"{name} has no version {version}; offered: {', '.join(str(v.version) for v in entry.versions) or 'none'}")
    p = snapshot.desired(channel or "stable", only=[name]).get(name)
    if p is None:
        raise NotFound(f"{name} has no version on channel {channel or 'stable'}")
    return p


def install_version(
    cache: Cache,
    docs: Documents,
    trusted: TrustedKeys,
    name: str,
    pointer: VersionPointer,
    sources: Sequence[Source],
    *,
    progress: ProgressFn | None = None,
    activate: bool = True,
    on_manifest: Callable[[Manifest], None] | None = None,
) -> Installed:
    value = RefValue(pointer.version, pointer.manifest_digest)
    manifest = _cached_manifest(cache, trusted, name, pointer)
    if manifest is None:
        doc = docs.manifest(name, pointer.version)
        try:
            manifest = verify_manifest(doc, trusted, expected_digest=pointer.manifest_digest)
        except UsageError as e:  # e.g. a '..' path: the registry's document is bad, not the command line
            raise IntegrityError(f"manifest {name} v{pointer.version} refused: {e}") from e
        if (manifest.name, manifest.version) != (name, pointer.version):
            raise IntegrityError(f"manifest is {manifest.name} v{manifest.version}, snapshot promised {name} v{pointer.version}")
        cache.install_manifest(name, pointer.version, doc)
    if on_manifest is not None:
        on_manifest(manifest)
    with cache.pin(f.digest for f in manifest.files):
        if cache.layout.read_ref(name, "active") != value:
            cache.set_ref(name, "prefetched", value)
        results = cache.install_files(manifest, sources, progress=progress)
        served = tuple(sorted({r.source for r in results.values()}))
        previous = cache.activate(name, value) if activate else None
    return Installed(manifest, value, served, previous, sum(r.fetched for r in results.values()))


def _cached_manifest(cache: Cache, trusted: TrustedKeys, name: str, pointer: VersionPointer) -> Manifest | None:
    """The stored manifest if it is exactly the one the snapshot names (rollback needs no network)."""
    try:
        doc = cache.manifest_document(name, pointer.version)
    except PifarmError:
        return None
    try:
        m = verify_manifest(doc, trusted, expected_digest=pointer.manifest_digest)
    except IntegrityError as e:
        log.warning("cached manifest %s v%d does not match the snapshot (%s); fetching it again", name, pointer.version, e)
        return None
    return m if manifest_digest(doc["signed"]) == pointer.manifest_digest else None

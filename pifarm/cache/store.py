"""The node's content-addressed model cache (layout in `cache.layout`).

Every blob enters through `Cache.install`: bytes from a source are written into `tmp/` while
`StreamVerifier` hashes them, then fsync, digest check, chmod 0444, `os.replace` into
`blobs/blake3/<hex>`, fsync of the directory. So `blobs/` only ever holds complete, verified
bytes, whatever instant the power goes.

Temp files: `tmp/<hex>.partial` is the resumable one, held under an flock by its writer; a
restarted pull re-hashes its prefix and asks the source only for the rest. When another process
holds it, the install uses a private `tmp/.<hex>.<uuid>.part` instead (exclusive create). Locks
only save work: correctness rests on the digest check before the rename.

Refs and manifests are swapped with os.replace; `activate` writes `previous` before `active`, so
a crash in between leaves both pointing at the old version, never at nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from pifarm.cache.budget import BlobUse, BudgetExceeded, plan_eviction
from pifarm.cache.fsutil import DISK_FULL, DiskFullError, atomic_write, fsync_dir, write_all
from pifarm.cache.layout import REF_NAMES, CacheLayout, RefValue
from pifarm.cache.metrics import NodeMetrics
from pifarm.cache.source import Source
from pifarm.errors import (Conflict, IntegrityError, NotFound, PifarmError, ReadOnlyError, SourceError, SourcePass,
                           UsageError)
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier, make_digest
from pifarm.signed.manifest import Manifest, check_name, manifest_digest
from pifarm.signed.signing import TrustedKeys

log = logging.getLogger(__name__)

PARTIAL_RE = re.compile(r"^([0-9a-f]{64})\.partial\Z")
HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")


def _lock_or_close(fd: int) -> bool:
    """Take fd's exclusive lock without waiting; when another process holds it, close fd: False."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True


#: progress callback: (bytes just received, source name)
ProgressFn = Callable[[int, str], None]


@dataclass(frozen=True)
class InstallResult:
    path: Path
    source: str  # the source that served the bytes, or "cache" when they were already here
    fetched: int = 0  # bytes transferred by this call
    resumed_from: int = 0  # bytes of a partial from an earlier, interrupted pull


@dataclass(frozen=True)
class RecoveryReport:
    removed_tmp: tuple[str, ...] = ()
    kept_partials: tuple[str, ...] = ()
    dropped_refs: tuple[str, ...] = ()  # "name/which: why"
    stray_blobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScrubReport:
    checked: int
    bytes: int
    damaged: tuple[str, ...]  # one message per damaged blob (already quarantined)
    damaged_digests: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.damaged


@dataclass(frozen=True)
class GcReport:
    removed_blobs: int = 0
    freed_bytes: int = 0
    removed_manifests: int = 0
    removed_tmp: int = 0


@dataclass
class _Own:
    """What this process did to blob files itself, so the tamper watch can tell it from tampering."""

    fingerprints: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # hex -> (ino, size, ctime_ns)
    deleting: set[str] = field(default_factory=set)


class _ResumedMismatch(IntegrityError):
    """The digest failed after resuming a partial: the old prefix may be the bad part."""


class Cache:
    """A handle on one cache directory; cheap to create, state lives on disk."""

    def __init__(
        self,
        root: str | os.PathLike,
        max_bytes: int | None = None,
        *,
        metrics: NodeMetrics | None = None,
        recover: bool = True,
        read_only: bool = False,
    ):
        self.root = Path(root)
        self.layout = CacheLayout(self.root)
        self.max_bytes = max_bytes
        self.metrics = metrics or NodeMetrics()
        self._lock = threading.RLock()
        self._inflight: dict[str, int] = {}
        self._own = _Own()
        if read_only:  # a look at someone's (maybe live) cache: create, probe and repair nothing
            if not self.root.is_dir():
                raise NotFound(f"no cache at {self.root}; pass --cache DIR (or set [cache] root)")
            self.recovery = RecoveryReport()
            return
        self._open()
        self.recovery = self.recover() if recover else RecoveryReport()

    # ----------------------------------------------------------------- opening and recovery

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def _open(self) -> None:
        dirs = (self.layout.blobs, self.layout.tmp, self.root / "manifests", self.root / "refs", self.quarantine_dir)
        try:
            for d in dirs:
                d.mkdir(parents=True, exist_ok=True)
            probe = self.layout.tmp / f".probe.{uuid.uuid4().hex}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise ReadOnlyError(
                f"cache directory {self.root} is not writable ({e.strerror}); fix its owner/permissions "
                f"or choose another with --cache / PIFARM_CACHE_ROOT"
            ) from e

    def recover(self) -> RecoveryReport:
        """Start-up: clear temp leftovers (keep resumable partials), check every ref's blobs."""
        removed, kept, stray = [], [], []
        for p in self.layout.tmp.iterdir():
            m = PARTIAL_RE.match(p.name)
            if m and (self.layout.blobs / m.group(1)).exists():
                self._unlink_unlocked(p, removed)  # finished by someone else: the partial is stale
            elif m:
                if p.stat().st_size:
                    kept.append(p.name)
                else:
                    self._unlink_unlocked(p, removed)
            else:
                self._unlink_unlocked(p, removed)
        for p in [*self.root.glob("refs/*/.*.tmp"), *self.root.glob("manifests/*/.*.tmp")]:
            p.unlink(missing_ok=True)  # an atomic_write cut short: the old file is still in place
            removed.append(str(p.relative_to(self.root)))
        for p in self.layout.blobs.iterdir():
            if not HEX_RE.match(p.name) or not p.is_file():
                stray.append(p.name)
                self._quarantine_path(p, "not a blob name")
        dropped = self._check_refs()
        rep = RecoveryReport(tuple(removed), tuple(kept), tuple(dropped), tuple(stray))
        if removed or dropped or stray:
            log.warning("cache %s recovered: %s", self.root, rep)
        return rep

    def _unlink_unlocked(self, p: Path, removed: list[str]) -> None:
        """Remove a temp file unless a live writer (another process) holds its lock."""
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        if not _lock_or_close(fd):
            return
        try:
            os.unlink(p)
            removed.append(p.name)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def _check_refs(self) -> list[str]:
        dropped = []
        for name in self.layout.models():
            bad: dict[str, str] = {}
            for which in REF_NAMES:
                try:
                    v = self.layout.read_ref(name, which)
                except IntegrityError as e:
                    bad[which] = str(e)
                    continue
                if v is None:
                    continue
                why = self._ref_problem(name, v)
                if why:
                    bad[which] = why
            for which, why in bad.items():
                self._remove_ref(name, which)
                dropped.append(f"{name}/{which}: {why}")
            if "active" in bad and "previous" not in bad:
                prev = self.layout.read_ref(name, "previous")
                if prev is not None:
                    self.set_ref(name, "active", prev)
                    self._remove_ref(name, "previous")
                    dropped.append(f"{name}/active: replaced by previous version {prev.version}")
        return dropped

    def _ref_problem(self, name: str, v: RefValue) -> str | None:
        try:
            m = self.manifest(name, v.version)
            digest = manifest_digest(self.manifest_document(name, v.version)["signed"])
        except PifarmError as e:
            return str(e)
        if digest != v.manifest_digest:
            return f"manifest {name} v{v.version} is not {v.manifest_digest}"
        for f in m.files:
            p = self.layout.blob(f.digest)
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                return f"blob {f.digest} ({f.path}) is missing"
            if size != f.size:
                return f"blob {f.digest} ({f.path}) has {size} bytes, manifest says {f.size}"
        return None

    # ----------------------------------------------------------------- blobs

    def blob_path(self, digest: str, *, touch: bool = True) -> Path:
        """Path of a present blob (bumps its LRU time); NotFound if it is not in the cache."""
        p = self.layout.blob(digest)
        if not p.exists():
            raise NotFound(f"blob {digest} is not in cache {self.root}; pull its model first")
        if touch:
            self.touch(digest)
        return p

    def has_blob(self, ref: BlobRef) -> bool:
        try:
            return self.layout.blob(ref.digest).stat().st_size == ref.size
        except FileNotFoundError:
            return False

    def touch(self, digest: str) -> None:
        p = self.layout.blob(digest)
        with contextlib.suppress(OSError):
            os.utime(p)
            self._remember(p)

    def _remember(self, p: Path) -> None:
        st = p.stat()
        with self._lock:
            self._own.fingerprints[p.name] = (st.st_ino, st.st_size, st.st_ctime_ns)
            self._own.deleting.discard(p.name)

    def is_own_state(self, hexd: str, st: os.stat_result | None) -> bool:
        """True when a blob looks exactly as this process last left it (tamper watch)."""
        with self._lock:
            if st is None:
                return hexd in self._own.deleting
            return self._own.fingerprints.get(hexd) == (st.st_ino, st.st_size, st.st_ctime_ns)

    def blobs(self) -> list[BlobUse]:
        out = []
        if not self.layout.blobs.is_dir():  # a cache opened read-only that never held a blob
            return out
        for e in os.scandir(self.layout.blobs):
            if HEX_RE.match(e.name):
                with contextlib.suppress(FileNotFoundError):
                    st = e.stat()
                    out.append(BlobUse(make_digest(e.name), st.st_size, st.st_mtime))
        return out

    def used_bytes(self) -> int:
        return sum(b.size for b in self.blobs())

    @contextlib.contextmanager
    def pin(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep blobs from eviction while a multi-blob install is in flight."""
        ds = list(digests)
        with self._lock:
            for d in ds:
                self._inflight[d] = self._inflight.get(d, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for d in ds:
                    self._inflight[d] -= 1
                    if not self._inflight[d]:
                        del self._inflight[d]

    def pinned(self) -> set[str]:
        """Digests of every blob an active/previous/prefetched ref needs, plus in-flight installs."""
        with self._lock:
            out = set(self._inflight)
        for name in self.layout.models():
            for which in REF_NAMES:
                with contextlib.suppress(PifarmError):
                    v = self.layout.read_ref(name, which)
                    if v is not None:
                        out.add(v.manifest_digest)
                        out.update(f.digest for f in self.manifest(name, v.version).files)
        return out

    def make_room(self, incoming: int, what: str = "blob") -> None:
        try:
            victims = plan_eviction(self.blobs(), self.pinned(), self.max_bytes, incoming, what)
        except BudgetExceeded:
            self.metrics.budget_refusals.inc()
            raise
        for b in victims:
            log.info("evicting %s (%d bytes, least recently used)", b.digest, b.size)
            self._delete_blob(b.digest)
            self.metrics.evictions.inc()

    def _delete_blob(self, digest: str) -> None:
        p = self.layout.blob(digest)
        with self._lock:
            self._own.deleting.add(p.name)
            self._own.fingerprints.pop(p.name, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)

    def quarantine(self, digest: str, why: str) -> Path | None:
        """Move a damaged blob out of `blobs/` so nothing serves it; returns where it went."""
        return self._quarantine_path(self.layout.blob(digest), why)

    def _quarantine_path(self, p: Path, why: str) -> Path | None:
        dst = self.quarantine_dir / f"{p.name}.{int(time.time())}.{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._own.deleting.add(p.name)
            self._own.fingerprints.pop(p.name, None)
        try:
            os.replace(p, dst)
        except FileNotFoundError:
            return None
        log.warning("quarantined %s: %s", p.name, why)
        return dst

    def install(self, ref: BlobRef, sources: Sequence[Source], *, progress: ProgressFn | None = None) -> InstallResult:
        """Fetch one blob from the first source that delivers it intact; install it atomically.

        A source failure or a digest mismatch moves on to the next source; nothing unverified
        is ever renamed into `blobs/`. Raises SourceError when every source failed.
        """
        with self.pin([ref.digest]):
            dst = self.layout.blob(ref.digest)
            if self.has_blob(ref):
                self.touch(ref.digest)
                return InstallResult(dst, "cache")
            if dst.exists():
                self.quarantine(ref.digest, "size differs from the manifest")
            self.make_room(ref.size, f"blob {ref.digest}")
            failures = []
            for src in sources:
                name = getattr(src, "name", type(src).__name__)
                for attempt in range(2):
                    try:
                        res = self._fetch(ref, src, progress)
                        self.metrics.blobs_installed.labels(name).inc()
                        self.metrics.cache_bytes.set(self.used_bytes())
                        return res
                    except _ResumedMismatch as e:
                        if attempt == 0:
                            log.warning("%s; retrying %s from byte 0", e, name)
                            continue
                        self.metrics.rejected.labels(name).inc()
                        failures.append(f"{name}: {e}")
                    except IntegrityError as e:
                        log.warning("rejected %s from %s: %s", ref.digest, name, e)
                        self.metrics.rejected.labels(name).inc()
                        failures.append(f"{name}: {e}")
                    except SourcePass as e:  # not its blob (peers and a small one): not a failure
                        log.debug("source %s passes %s on: %s", name, ref.digest, e)
                        failures.append(f"{name}: {e}")
                    except SourceError as e:
                        log.warning("source %s failed for %s: %s", name, ref.digest, e)
                        self.metrics.source_failures.labels(name).inc()
                        failures.append(f"{name}: {e}")
                    break
            if not failures:
                raise SourceError(f"blob {ref.digest}: no sources configured; add [[sources]] to the node config")
            raise SourceError(f"blob {ref.digest} ({ref.size} bytes) could not be fetched: " + "; ".join(failures))

    def _open_temp(self, hexd: str) -> tuple[int, Path, bool]:
        """(fd, path, resumable): the shared partial if we can lock it, else a private temp."""
        partial = self.layout.tmp / f"{hexd}.partial"
        for _ in range(3):
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not _lock_or_close(fd):
                break
            try:
                same = os.stat(partial).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, partial, True
            os.close(fd)  # renamed or removed under us by another installer: start over
        private = self.layout.tmp / f".{hexd}.{uuid.uuid4().hex}.part"
        fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, private, False

    def _fetch(self, ref: BlobRef, src: Source, progress: ProgressFn | None) -> InstallResult:
        name = getattr(src, "name", type(src).__name__)
        dst = self.layout.blob(ref.digest)
        try:
            fd, tmp, resumable = self._open_temp(ref.hex)
        except OSError as e:
            raise self._local_error(e, self.layout.tmp) from e
        keep = False
        start = 0
        try:
            verifier = StreamVerifier(ref, name)
            if resumable:
                start = self._rehash_prefix(fd, ref, verifier)
            os.lseek(fd, start, os.SEEK_SET)
            got = 0
            handed = self._handed_file(src, ref) if start == 0 else None
            chunks = src.chunks(ref, start)
            try:
                for chunk in chunks:
                    verifier.update(chunk)
                    if handed is None:
                        write_all(fd, chunk)
                    got += len(chunk)
                    if progress:
                        progress(len(chunk), name)
            except SourceError:
                keep = resumable
                raise
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
            if handed is None:
                os.fsync(fd)
            try:
                verifier.finish()
            except IntegrityError as e:
                if start:
                    raise _ResumedMismatch(f"{e} (after resuming at byte {start})") from e
                raise
            if handed is not None:
                return self._adopt(handed, ref, name, got)
            os.fchmod(fd, 0o444)
            if dst.exists() and self.has_blob(ref):
                return InstallResult(dst, name, got, start)  # another installer won the race
            os.replace(tmp, dst)
            fsync_dir(self.layout.blobs)
            self._remember(dst)
            self.metrics.bytes_fetched.labels(name).inc(got)
            return InstallResult(dst, name, got, start)
        except OSError as e:
            raise self._local_error(e, tmp) from e
        finally:
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            os.close(fd)

    def _handed_file(self, src: Source, ref: BlobRef) -> Path | None:
        """The file a source lays the blob's bytes in as it fetches (optional `blob_file(ref)`, the
        peer source's piece store), when it is on the cache's filesystem: the bytes `chunks()`
        yields are read from it, so once they verified the file is linked in instead of written
        again (one page-cache copy of the blob, not two)."""
        fn = getattr(src, "blob_file", None)
        p = fn(ref) if fn is not None else None
        if p is None:
            return None
        try:
            return p if os.stat(p.parent).st_dev == os.stat(self.layout.tmp).st_dev else None
        except OSError:
            return None

    def _adopt(self, handed: Path, ref: BlobRef, name: str, got: int) -> InstallResult:
        """Link a handed file whose bytes just verified into `blobs/` (fsynced first, read-only)."""
        dst = self.layout.blob(ref.digest)
        link = self.layout.tmp / f".{ref.hex}.{uuid.uuid4().hex}.link"
        os.link(handed, link)
        try:
            lfd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(lfd).st_size != ref.size:
                    raise IntegrityError(f"blob {ref.digest} from {name}: its file is not {ref.size} bytes")
                os.fsync(lfd)
                os.fchmod(lfd, 0o444)
            finally:
                os.close(lfd)
            if dst.exists() and self.has_blob(ref):
                return InstallResult(dst, name, got, 0)  # another installer won the race
            os.replace(link, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        fsync_dir(self.layout.blobs)
        self._remember(dst)
        self.metrics.bytes_fetched.labels(name).inc(got)
        return InstallResult(dst, name, got, 0)

    def _rehash_prefix(self, fd: int, ref: BlobRef, verifier: StreamVerifier) -> int:
        size = os.fstat(fd).st_size
        if size > ref.size:
            os.ftruncate(fd, 0)
            return 0
        os.lseek(fd, 0, os.SEEK_SET)
        done = 0
        while done < size:
            buf = os.read(fd, min(CHUNK * 4, size - done))
            if not buf:
                break
            verifier.update(buf)
            done += len(buf)
        if done != size:
            os.ftruncate(fd, done)
        return done

    def _local_error(self, e: OSError, where: Path) -> PifarmError:
        if e.errno in DISK_FULL:
            return DiskFullError(
                f"no space left in cache {self.root} while writing {where.name} ({e.strerror}); "
                f"the partial file was removed; free space or lower cache.max_bytes"
            )
        return ReadOnlyError(f"cache {self.root}: cannot write {where} ({e.strerror})")

    def install_files(
        self, manifest: Manifest, sources: Sequence[Source], *, progress: ProgressFn | None = None
    ) -> dict[str, InstallResult]:
        """Install every file of a manifest (all pinned until done); {path: result}."""
        with self.pin(f.digest for f in manifest.files):
            need = sum(f.size for f in manifest.files if not self.has_blob(f.ref))
            self.make_room(need, f"{manifest.name} v{manifest.version}")
            return {f.path: self.install(f.ref, sources, progress=progress) for f in manifest.files}

    # ----------------------------------------------------------------- manifests and refs

    def install_manifest(
        self, name: str, version: int, document: dict[str, Any], trusted: TrustedKeys | None = None
    ) -> Manifest:
        """Store a signed manifest document (checked against name/version, and its signature
        when `trusted` is given); returns the parsed manifest."""
        check_name(name)
        body = trusted.verify(document, what=f"manifest {name} v{version}") if trusted else document.get("signed")
        if not isinstance(body, dict):
            raise IntegrityError(f"manifest {name} v{version} is not a signed document")
        m = Manifest.from_json(body)
        if (m.name, m.version) != (name, version):
            raise IntegrityError(f"manifest document is {m.name} v{m.version}, expected {name} v{version}")
        atomic_write(self.layout.manifest(name, version), json.dumps(document, sort_keys=True).encode())
        return m

    def manifest_document(self, name: str, version: int) -> dict[str, Any]:
        p = self.layout.manifest(name, version)
        try:
            return json.loads(p.read_text())
        except FileNotFoundError as e:
            raise NotFound(f"manifest {name} v{version} is not in cache {self.root}") from e
        except ValueError as e:
            raise IntegrityError(f"manifest {p} is not JSON: {e}") from e

    def manifest(self, name: str, version: int) -> Manifest:
        doc = self.manifest_document(name, version)
        if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
            raise IntegrityError(f"manifest {name} v{version} in cache is not a signed document")
        return Manifest.from_json(doc["signed"])

    def resolve(self, name: str, which: str = "active") -> tuple[RefValue, Manifest, dict[str, Path]]:
        """(ref, manifest, {file path: blob path}) for what `which` points at — the inference
        server's one call to find the bytes it serves."""
        v = self.layout.require_ref(name, which)
        m = self.manifest(name, v.version)
        return v, m, {f.path: self.blob_path(f.digest) for f in m.files}

    def set_ref(self, name: str, which: str, value: RefValue | None) -> None:
        if which not in REF_NAMES:
            raise UsageError(f"unknown ref {which!r}; expected one of {', '.join(REF_NAMES)}")
        if value is None:
            self._remove_ref(name, which)
            return
        atomic_write(self.layout.ref(name, which), json.dumps(value.to_json(), sort_keys=True).encode())

    def _remove_ref(self, name: str, which: str) -> None:
        p = self.layout.ref(name, which)
        try:
            os.unlink(p)
            fsync_dir(p.parent)
        except FileNotFoundError:
            pass

    def activate(self, name: str, value: RefValue) -> RefValue | None:
        """Make `value` active (its manifest and blobs must be here); old active -> previous.

        Returns the version that became `previous` (None when nothing changed)."""
        why = self._ref_problem(name, value)
        if why:
            raise Conflict(f"cannot activate {name} v{value.version}: {why}")
        cur = self.layout.read_ref(name, "active")
        if cur != value:
            if cur is not None:
                self.set_ref(name, "previous", cur)
            self.set_ref(name, "active", value)
        if self.layout.read_ref(name, "prefetched") == value:
            self._remove_ref(name, "prefetched")
        return cur if cur != value else None

    def rollback(self, name: str) -> RefValue:
        """Swap active and previous without the network; returns the new active version."""
        prev = self.layout.require_ref(name, "previous")
        self.activate(name, prev)
        return prev

    # ----------------------------------------------------------------- maintenance

    def verify_all(self, bytes_per_second: float | None = None, stop: threading.Event | None = None) -> ScrubReport:
        from pifarm.cache.scrub import scrub

        return scrub(self, bytes_per_second=bytes_per_second, stop=stop)

    def referenced_sizes(self) -> dict[str, int]:
        """digest -> size promised by any manifest stored in the cache."""
        out: dict[str, int] = {}
        mdir = self.root / "manifests"
        for p in mdir.glob("*/*.json"):
            with contextlib.suppress(PifarmError, ValueError):
                doc = json.loads(p.read_text())
                for f in Manifest.from_json(doc["signed"]).files:
                    out[f.digest] = f.size
        return out

    def gc(self, *, scratch: bool = True) -> GcReport:
        """Remove blobs and manifests no ref needs, and (scratch) quarantined files and stale temp
        files. The node calls it with scratch=False after each activation: its default retention is
        active, previous and prefetched per model (resumable partials and evidence are kept)."""
        keep = self.pinned()
        kept_versions = set()
        for name in self.layout.models():
            for which in REF_NAMES:
                with contextlib.suppress(PifarmError):
                    v = self.layout.read_ref(name, which)
                    if v is not None:
                        kept_versions.add((name, v.version))
        nblobs = freed = nman = ntmp = 0
        for b in self.blobs():
            if b.digest not in keep:
                self._delete_blob(b.digest)
                nblobs += 1
                freed += b.size
        for p in (self.root / "manifests").glob("*/*.json"):
            if (p.parent.name, int(p.stem) if p.stem.isdigit() else -1) not in kept_versions:
                p.unlink(missing_ok=True)
                nman += 1
        removed: list[str] = []
        for p in list(self.layout.tmp.iterdir()) if scratch else ():
            self._unlink_unlocked(p, removed)
        ntmp = len(removed)
        for p in self.quarantine_dir.iterdir() if scratch else ():
            p.unlink(missing_ok=True)
        self.metrics.cache_bytes.set(self.used_bytes())
        return GcReport(nblobs, freed, nman, ntmp)

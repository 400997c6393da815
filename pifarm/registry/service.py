"""The registry: publish, promote, rollback, retire, and the signed snapshot nodes watch.

Publish order (each step durable before the next):
    1. blobs uploaded to the store and verified there (content-addressed, so retries are free)
    2. the signed manifest written to the store
    3. one SQLite transaction: version row, channel, revision, signed snapshot  <- commit point
    4. snapshot.json mirrored to the store; subscribers notified
A crash before 3 leaves only unreferenced objects that `recover()` deletes at the next open; a
crash after 3 leaves a committed version whose snapshot mirror `recover()` rewrites.

With an S3 store that honours conditional writes (`shared`), step 3's commit point is the
creation of `revisions/<n>.json` in the bucket (inside the SQLite transaction, which rolls back
when another aggregator made revision n first) and the manifest is mirrored after it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import blake3

from pifarm.errors import Conflict, ConfigError, IntegrityError, NotFound, ReadOnlyError, UsageError
from pifarm.signed.canonical import canonical_bytes
from pifarm.registry.datadir import ensure_api_token, lock_data_dir
from pifarm.registry.db import Database, VersionRow
from pifarm.registry.shared import LostRace, SharedMixin
from pifarm.registry.statedoc import ensure_schema, nsids, set_extra
from pifarm.signed.files import collect_files
from pifarm.signed.integrity import BlobRef, StreamVerifier
from pifarm.signed.pieces import hash_file
from pifarm.signed.manifest import FileEntry, Manifest, TensorSpec, check_name
from pifarm.registry.settings import RegistrySettings, StoreSettings
from pifarm.signed.signing import PRIVATE_NAME, PUBLIC_NAME, SigningKey, public_pem
from pifarm.signed.snapshot import (CHANNELS, ModelEntry, RolloutPointer, Snapshot, VersionPointer, iso,
                                    parse_iso, utcnow)
from pifarm.registry.store import SNAPSHOT_KEY, MODEL_PREFIX, Store, StoreUnavailable, manifest_key, open_store
from pifarm.registry.tflite_info import read_signature

log = logging.getLogger(__name__)

__all__ = ["Registry", "ServedVersion", "ensure_api_token", "check_channel", "check_labels"]

Progress = Callable[[str, int, int], None]  # (phase, bytes advanced, phase total)


@dataclass(frozen=True)
class ServedVersion:
    """A version nodes may fetch: what the target side turns into a volume/namespace."""

    name: str
    version: int
    manifest_digest: str
    #: the namespace id the registry assigned (the same on every aggregator of a shared bucket)
    nsid: int | None = None


def _meta_in(conn, key: str, default):
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def check_channel(channel: str | None) -> str | None:
    if channel is not None and channel not in CHANNELS:
        raise UsageError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    return channel


def check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    out = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise UsageError(f"label {k!r}={v!r}: labels are non-empty string keys with string values")
        out[k] = v
    return out


def _settings(settings: Any) -> tuple[RegistrySettings, StoreSettings]:
    """Accept RegistrySettings, the aggregator's config (its .registry and .store sections) or a
    {section: settings} mapping."""
    if settings is None:
        return RegistrySettings(), StoreSettings()
    if isinstance(settings, RegistrySettings):
        return settings, StoreSettings()
    if isinstance(getattr(settings, "registry", None), RegistrySettings):
        return settings.registry, getattr(settings, "store", None) or StoreSettings()
    if isinstance(settings, Mapping):
        return settings.get("registry") or RegistrySettings(), settings.get("store") or StoreSettings()
    raise TypeError(f"registry settings: unexpected {type(settings).__name__}")


class Registry(SharedMixin):
    def __init__(self, data_dir: Path, settings: RegistrySettings, store: Store, db: Database,
                 key: SigningKey, lock_fd: int | None):
        self.data_dir = data_dir
        self.settings = settings
        self.store = store
        self.db = db
        self.key = key
        self._lock_fd = lock_fd
        self._write = threading.RLock()
        self._subscribers: list[Callable[[int], None]] = []
        self._staged: dict[str, float] = {}  # API uploads awaiting their publish: digest -> time
        self._pins: Counter[str] = Counter()  # blobs of publishes in progress in this process
        self._temp_cleaned = False
        self._last_sweep = time.monotonic()  # start-up's recover() has just collected
        self._pin_lock = threading.Lock()
        self._mirror_pending = False
        self._opened_readonly = lock_fd is None
        self.read_only_reason: str | None = "opened read-only" if lock_fd is None else None
        self._snap_cache: tuple[int, bytes] | None = None
        self.store_check_interval = 5.0

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: str | os.PathLike, settings: Any = None, *, store: Store | None = None,
             readonly: bool = False) -> "Registry":
        """Open (creating when empty) the registry in `data_dir`.

        `settings` is RegistrySettings or the aggregator config (`appliance.config`); a writer
        holds an exclusive lock on the data dir, `readonly=True` opens beside a running writer.
        """
        reg_settings, store_settings = _settings(settings)
        d = Path(data_dir)
        if readonly and not (d / "registry.db").is_file():
            raise NotFound(f"no registry in {d} (no registry.db); run `pifarm aggregator run --data-dir {d}` "
                           "or publish into it with --data-dir first")
        try:
            for sub in () if readonly else (d, d / "keys", d / "tmp"):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"data dir {d}: {e.strerror or e}") from e
        lock_fd = None if readonly else lock_data_dir(d)
        try:
            key_path = d / "keys" / PRIVATE_NAME
            if reg_settings.signing_key:  # one key shared by several aggregators (issue 17)
                key_path = Path(reg_settings.signing_key)
                if not key_path.is_file():
                    raise ConfigError(f"[registry] signing_key {key_path} does not exist (copy the first "
                                      "aggregator's keys/signing.key there)")
            if not key_path.exists() and not readonly:
                SigningKey.generate().write(d / "keys")
            key = SigningKey.load(key_path)
            if reg_settings.signing_key and not readonly and not (d / "keys" / PUBLIC_NAME).exists():
                (d / "keys" / PUBLIC_NAME).write_bytes(public_pem(key.public))  # what nodes are given
            db = Database(d / "registry.db")
            ensure_schema(db._conn)
            st = store if store is not None else open_store(store_settings, d)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        reg = cls(d, reg_settings, st, db, key, lock_fd)
        reg.store_check_interval = store_settings.check_interval
        if not readonly:
            reg._init_snapshot()
            try:
                reg.store.check()
                reg._setup_log(store_settings)
                reg.recover(startup=True)
            except StoreUnavailable as e:
                reg._log_pending = store_settings  # probe the bucket once it answers, before any write
                reg._go_read_only(e)
            except BaseException:
                reg.close()
                raise
        return reg

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.stop_following()
        self.db.close()
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pubkey_path(self) -> Path:
        return self.data_dir / "keys" / PUBLIC_NAME

    # -- notifications ------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(revision)` after every committed change; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _notify(self, revision: int) -> None:
        for cb in list(self._subscribers):
            try:
                cb(revision)
            except Exception:  # one broken subscriber must not stop the others or the caller
                log.exception("registry subscriber %r failed on revision %d", cb, revision)

    # -- read-only mode -----------------------------------------------------------------------
    def _go_read_only(self, e: Exception) -> None:
        self.read_only_reason = f"store {self.store.location} unreachable: {e}"
        log.warning("registry read-only: %s", self.read_only_reason)

    def check_store(self) -> bool:
        """Probe the store; enter or leave read-only mode; re-mirror what failed meanwhile."""
        if self._opened_readonly:
            return False
        try:
            self.store.check()
            with self._write:
                pending, self._log_pending = getattr(self, "_log_pending", None), None
                if pending is not None:
                    self._setup_log(pending)
                if self._mirror_pending or self.read_only_reason:
                    self.recover()
        except StoreUnavailable as e:
            self._go_read_only(e)
            return False
        if self.read_only_reason:
            log.info("registry writable again: store %s reachable", self.store.location)
        self.read_only_reason = None
        return True

    def _require_writable(self) -> None:
        if self._opened_readonly:
            raise ReadOnlyError("registry opened read-only; writes go through the running aggregator")
        if not self.check_store():
            raise ReadOnlyError(f"registry is read-only: {self.read_only_reason}; "
                                "writes resume when the store is reachable again")

    # -- snapshot -------------------------------------------------------------------------------
    def _build_snapshot(self, revision: int) -> bytes:
        channels = self.db.all_channels()
        models: dict[str, dict] = {}
        for row in self.db.versions():
            models.setdefault(row.name, {})[row.version] = row.manifest_digest
        with self.db._lock:
            ids = nsids(self.db._conn)  # the signed namespace id of each version (shared bucket)
        entries = {}
        for name, versions in models.items():
            ch = {c: VersionPointer(v, versions[v]) for c, v in channels.get(name, {}).items() if v in versions}
            entries[name] = ModelEntry(ch, tuple(VersionPointer(v, d, ids.get((name, v)))
                                                 for v, d in sorted(versions.items())))
        expires = iso(utcnow() + timedelta(seconds=self.settings.snapshot_lifetime))
        rollouts = {n: r for n, r in self._rollouts().items()
                    if n in entries and any(v.version == r.version for v in entries[n].versions)}
        snap = Snapshot(revision, expires, entries, rollouts)
        return canonical_bytes(self.key.sign(snap.to_json()))

    def _rollouts(self) -> dict[str, RolloutPointer]:
        raw = self.db.get_meta("rollouts")
        return {n: RolloutPointer.from_json(r) for n, r in json.loads(raw).items()} if raw else {}

    def set_rollouts(self, rollouts: Mapping[str, RolloutPointer], promote: tuple[str, int] | None = None) -> int:
        """Make the snapshot carry exactly `rollouts` (pifarm.registry.rollout decides them) and,
        with `promote`, point stable at a version in the same revision; unchanged -> no revision."""
        data = json.dumps({n: r.to_json() for n, r in sorted(rollouts.items())}, sort_keys=True)
        return self._write_op(lambda: self._set_rollouts(data, promote))

    def _set_rollouts(self, data: str, promote: tuple[str, int] | None) -> int:
        with self._write:
            same = self.db.get_meta("rollouts", "{}") == data
            if same and (promote is None or self.db.channels(promote[0]).get("stable") == promote[1]):
                return self.revision
            self._require_writable()

            def change(conn) -> None:
                Database.set_meta(conn, "rollouts", data)
                if promote is not None:
                    self._row(*promote)
                    Database.set_channel(conn, promote[0], "stable", int(promote[1]))

            with self.db.transaction() as conn:
                rev = self._commit_change(conn, change)
        self._after_commit(rev)
        return rev

    def _commit_change(self, conn, change: Callable[[Any], None] | None = None, added: tuple[bytes, ...] = ()) -> int:
        """Inside a transaction: apply `change`, bump the revision, sign and store the snapshot;
        in bucket mode create the revision in the bucket (LostRace: another aggregator did first)."""
        if change is not None:
            change(conn)
        revision = int((conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone() or (0,))[0]) + 1
        conn.execute("UPDATE version_extra SET added_in=? WHERE added_in IS NULL", (revision,))
        Database.set_meta(conn, "revision", revision)
        # built through the same connection lock, so it sees this transaction's rows
        snapshot = self._build_snapshot(revision)
        Database.set_meta(conn, "snapshot", snapshot)
        self._log_revision(conn, revision, snapshot, list(added))
        return revision

    def _init_snapshot(self) -> None:
        if self.db.get_meta("snapshot") is None:
            with self.db.transaction() as conn:
                Database.set_meta(conn, "revision", 0)
                Database.set_meta(conn, "snapshot", self._build_snapshot(0))
            self._mirror_pending = True

    def _mirror_snapshot(self) -> None:
        try:
            if self.log_ is not None:  # never move a newer snapshot.json back
                self.log_.advance_snapshot(*self.snapshot_bytes())
            else:
                self.store.put_document(SNAPSHOT_KEY, self.snapshot_bytes()[1])
            self._mirror_pending = False
        except StoreUnavailable as e:
            self._mirror_pending = True
            self._go_read_only(e)

    def _after_commit(self, revision: int) -> None:
        self._snap_cache = None
        self._mirror_snapshot()
        self._notify(revision)

    def snapshot_bytes(self) -> tuple[int, bytes]:
        """(revision, exact signed bytes) of the current snapshot.

        A writer is the only process changing the database, so its cache (refreshed at each
        commit) is authoritative and a read costs no query; a read-only opener asks SQLite."""
        cached = self._snap_cache
        if cached is None or self._opened_readonly:
            data = bytes(self.db.get_meta("snapshot"))
            cached = self._snap_cache = (json.loads(data)["signed"]["revision"], data)
        return cached

    def snapshot_document(self) -> dict[str, Any]:
        return json.loads(self.snapshot_bytes()[1])

    @property
    def revision(self) -> int:
        return self.snapshot_bytes()[0]

    def refresh_if_due(self) -> bool:
        """Re-sign the snapshot (new revision) once half its lifetime has passed, so nodes never freeze."""
        body = self.snapshot_document()["signed"]
        left = (parse_iso(body["expires"]) - utcnow()).total_seconds()
        if left > self.settings.snapshot_lifetime / 2 or self.read_only_reason or self._opened_readonly:
            return False

        def body() -> bool:
            body_ = self.snapshot_document()["signed"]  # another aggregator may have re-signed it meanwhile
            if (parse_iso(body_["expires"]) - utcnow()).total_seconds() > self.settings.snapshot_lifetime / 2:
                return False
            with self.db.transaction() as conn:
                rev = self._commit_change(conn)
            self._after_commit(rev)
            return True

        return self._write_op(body)

    # -- reads ----------------------------------------------------------------------------------
    def models(self) -> dict[str, dict[str, Any]]:
        """{name: {"channels": {ch: version}, "versions": [{version, manifest_digest, size, created}]}}."""
        channels = self.db.all_channels()
        out: dict[str, dict[str, Any]] = {}
        for row in self.db.versions():
            m = out.setdefault(row.name, {"channels": channels.get(row.name, {}), "versions": []})
            m["versions"].append({"version": row.version, "manifest_digest": row.manifest_digest,
                                  "size": row.total_size, "created": row.created})
        return out

    def model(self, name: str) -> dict[str, Any]:
        check_name(name)
        m = self.models().get(name)
        if m is None:
            raise NotFound(f"model {name!r} does not exist (see `pifarm models`)")
        return m

    def _row(self, name: str, version: int) -> VersionRow:
        check_name(name)
        row = self.db.version(name, int(version))
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}")
        if row.retired:
            raise NotFound(f"model {name!r} version {version} is retired")
        return row

    def manifest_document(self, name: str, version: int) -> dict[str, Any]:
        return json.loads(self._row(name, version).document)

    def manifest_bytes(self, name: str, version: int) -> bytes:
        return self._row(name, version).document

    def manifest(self, name: str, version: int) -> Manifest:
        return Manifest.from_json(self.manifest_document(name, version)["signed"])

    def served_versions(self) -> list[ServedVersion]:
        with self.db._lock:
            ids = nsids(self.db._conn)
        return [ServedVersion(r.name, r.version, r.manifest_digest, ids.get((r.name, r.version)))
                for r in self.db.versions()]

    def blob_size(self, digest: str) -> int:
        return self.store.blob_size(digest)

    def blob_path_or_stream(self, digest: str, start: int = 0, end: int | None = None) -> Path | Iterator[bytes]:
        """A local path to the blob (filesystem store) or an iterator over bytes [start, end)."""
        path = self.store.local_blob_path(digest)
        if path is not None:
            if not path.exists():
                raise NotFound(f"blob {digest} is not in the store")
            return path
        return self.store.read_blob(digest, start, end)

    # -- publish --------------------------------------------------------------------------------
    def publish(self, path: str | os.PathLike, name: str, channel: str | None = None,
                labels: Mapping[str, str] | None = None, *, format: str | None = None,
                progress: Progress | None = None) -> tuple[Manifest, dict[str, Any]]:
        """Publish a file or directory as the next version of `name` (idempotent on identical content)."""
        check_name(name)
        check_channel(channel)
        labels = check_labels(labels)
        files = collect_files(path)
        self._require_writable()
        fmt, inputs, outputs = self._format_of(format, [(f.relpath, f.source) for f in files])
        total = sum(f.size for f in files)
        entries, sources = [], {}
        for f in files:
            digest, size, pieces = hash_file(f.source)  # per-piece digests too, so peers can share it
            entries.append(FileEntry(f.relpath, size, digest, pieces))
            sources[digest] = f.source
            if progress:
                progress("hash", size, total)
        self._pin([e.digest for e in entries])
        try:
            for e in entries:
                if e.digest in sources:
                    if not self._reusable(e.ref):
                        self.store.put_blob(e.ref, sources.pop(e.digest))
                    else:
                        sources.pop(e.digest)
                if progress:
                    progress("upload", e.size, total)
            return self._commit_version(name, entries, fmt, inputs, outputs, channel, labels)
        except StoreUnavailable as e:
            self._go_read_only(e)
            raise ReadOnlyError(f"publish of {name} refused: {self.read_only_reason}; nothing was committed") from e
        finally:
            self._unpin([e.digest for e in entries])

    def _reusable(self, ref: BlobRef) -> bool:
        """Whether a stored copy of `ref` can stand for this upload. In a shared bucket a blob that
        no live version uses and that is past half its orphan grace is written again, so a publish
        reusing an abandoned upload never races another aggregator collecting it."""
        if not self.store.has_blob(ref):
            return False
        if self.log_ is None or ref.digest in self.db.live_digests():
            return True
        return self.store.blob_age(ref.digest) < self.settings.orphan_grace / 2

    def _pin(self, digests: list[str]) -> None:
        with self._pin_lock:
            self._pins.update(digests)

    def _unpin(self, digests: list[str]) -> None:
        with self._pin_lock:
            self._pins.subtract(digests)
            for d in digests:
                if self._pins[d] <= 0:
                    del self._pins[d]

    def stage_blob(self, ref: BlobRef, path: Path) -> None:
        """Take a verified upload (API) into the store; protected from GC for `upload_grace` s."""
        self._require_writable()
        self._staged[ref.digest] = time.monotonic()
        self._pin([ref.digest])
        try:
            if not self._reusable(ref):
                self.store.put_blob(ref, path, consume=True)
        except StoreUnavailable as e:
            self._go_read_only(e)
            raise ReadOnlyError(f"upload of {ref.digest} refused: {self.read_only_reason}") from e
        finally:
            self._unpin([ref.digest])

    def publish_staged(self, name: str, files: list[FileEntry], channel: str | None = None,
                       labels: Mapping[str, str] | None = None, *, format: str | None = None
                       ) -> tuple[Manifest, dict[str, Any]]:
        """Publish a version whose blobs were uploaded already (the HTTP API's second step)."""
        check_name(name)
        check_channel(channel)
        labels = check_labels(labels)
        if not files:
            raise UsageError(f"publish of {name} lists no files")
        self._require_writable()
        try:
            for f in files:
                if not self.store.has_blob(f.ref):
                    raise NotFound(f"blob {f.digest} ({f.path}, {f.size} bytes) was not uploaded; upload it first")
            with tempfile.TemporaryDirectory(dir=self.data_dir / "tmp") as tmp:
                files = [self._with_pieces(f, Path(tmp)) for f in files]
                local = [(f.path, self._local_copy(f.ref, Path(tmp))) for f in files if f.path.endswith(".tflite")]
                if format == "raw" or (format is None and not local):
                    fmt, inputs, outputs = "raw", (), ()
                else:
                    fmt, inputs, outputs = self._format_of(format, local or [(files[0].path, self._local_copy(files[0].ref, Path(tmp)))])
            result = self._commit_version(name, list(files), fmt, inputs, outputs, channel, labels)
            for f in files:  # the upload grace counts until the commit: the version keeps them now
                self._staged.pop(f.digest, None)
            return result
        except StoreUnavailable as e:
            self._go_read_only(e)
            raise ReadOnlyError(f"publish of {name} refused: {self.read_only_reason}; nothing was committed") from e

    def _with_pieces(self, f: FileEntry, tmp: Path) -> FileEntry:
        """The entry with its per-piece digests, hashed here from the stored blob (not the client's word)."""
        if f.pieces is not None:
            return f
        digest, size, pieces = hash_file(self._local_copy(f.ref, tmp))
        if (digest, size) != (f.digest, f.size):
            raise IntegrityError(f"blob {f.digest} ({f.path}) in the store hashes to {digest}, {size} bytes")
        return FileEntry(f.path, f.size, f.digest, pieces)

    def _local_copy(self, ref: BlobRef, tmp: Path) -> Path:
        path = self.store.local_blob_path(ref.digest)
        if path is not None:
            return path
        out = tmp / ref.hex
        v = StreamVerifier(ref, source=self.store.location)
        with open(out, "wb") as f:
            for chunk in self.store.read_blob(ref.digest):
                v.update(chunk)
                f.write(chunk)
        v.finish()
        return out

    def _format_of(self, format: str | None, files: list[tuple[str, Path]]
                   ) -> tuple[str, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if format not in (None, "tflite", "raw"):
            raise UsageError(f"unknown model format {format!r}; expected tflite or raw")
        tfl = [(rel, p) for rel, p in files if rel.endswith(".tflite")]
        if format == "raw" or (format is None and not tfl):
            return "raw", (), ()
        rel, p = (tfl or files)[0]
        inputs, outputs = read_signature(p, label=rel)
        return "tflite", inputs, outputs

    def _commit_version(self, name: str, files: list[FileEntry], fmt: str, inputs, outputs,
                        channel: str | None, labels: dict[str, str]) -> tuple[Manifest, dict[str, Any]]:
        files = sorted(files, key=lambda f: f.path)
        content_key = blake3.blake3(canonical_bytes(
            {"format": fmt, "files": [f.to_json() for f in files], "labels": labels})).hexdigest()
        return self._write_op(lambda: self._commit_version_once(name, files, fmt, inputs, outputs, channel, labels,
                                                                content_key))

    def _commit_version_once(self, name: str, files: list[FileEntry], fmt: str, inputs, outputs,
                             channel: str | None, labels: dict[str, str], content_key: str
                             ) -> tuple[Manifest, dict[str, Any]]:
        with self._write:
            existing = self.db.find_content(name, content_key)
            if existing is not None:
                if channel and self.db.channels(name).get(channel) != existing.version:
                    self.promote(name, existing.version, channel)
                doc = json.loads(existing.document)
                return Manifest.from_json(doc["signed"]), doc
            for f in {f.digest: f for f in files}.values():
                if not self.store.has_blob(f.ref):
                    raise Conflict(f"blob {f.digest} ({f.path}) vanished from the store before the commit; publish again")
            version = self.db.next_version(self.db._conn, name)
            manifest = Manifest(name=name, version=version, format=fmt, files=tuple(files), created=iso(utcnow()),
                                inputs=tuple(inputs), outputs=tuple(outputs), labels=labels)
            doc = self.key.sign(manifest.to_json())
            data = canonical_bytes(doc)
            key = manifest_key(name, version)
            if self.log_ is None:  # bucket mode: the revision carries it, mirrored once committed
                try:
                    self.store.put_document(key, data)
                except StoreUnavailable:
                    self._try_delete(key)
                    raise
            row = VersionRow(name, version, manifest.digest, data, False, manifest.created, manifest.total_size,
                             content_key)

            def change(conn) -> None:
                Database.insert_version(conn, row, [(f.path, f.digest, f.size) for f in files])
                nsid = int(_meta_in(conn, "nsid_next", 1))  # one namespace id per version, farm-wide
                set_extra(conn, name, version, None, nsid)
                Database.set_meta(conn, "nsid_next", nsid + 1)
                if channel:
                    Database.set_channel(conn, name, channel, version)

            with self.db.transaction() as conn:
                rev = self._commit_change(conn, change, added=(data,))
            if self.log_ is not None:
                self.store.put_document(key, data)
            log.info("published %s version %d (%s) at revision %d", name, version, manifest.digest, rev)
        self._after_commit(rev)
        return manifest, doc

    def _try_delete(self, key: str) -> None:
        try:
            self.store.delete_document(key)
        except StoreUnavailable:
            pass  # recover() removes it once the store is back

    # -- channels and retirement ----------------------------------------------------------------------
    def promote(self, name: str, version: int, channel: str) -> int:
        """Point `channel` of `name` at `version`; returns the new revision (unchanged if already there)."""
        check_channel(channel)
        return self._write_op(lambda: self._promote(name, version, channel))

    def _promote(self, name: str, version: int, channel: str) -> int:
        with self._write:
            self._row(name, version)
            self._require_writable()
            if self.db.channels(name).get(channel) == int(version):
                return self.revision
            with self.db.transaction() as conn:
                rev = self._commit_change(conn, lambda c: Database.set_channel(c, name, channel, int(version)))
        self._after_commit(rev)
        return rev

    def rollback(self, name: str, channel: str) -> int:
        """Point `channel` back at the version it had before the current one; returns that version."""
        check_channel(channel)
        check_name(name)
        return self._write_op(lambda: self._rollback(name, channel))

    def _rollback(self, name: str, channel: str) -> int:
        with self._write:
            current = self.db.channels(name).get(channel)
            if current is None:
                raise NotFound(f"model {name!r} has no {channel} channel set" if self.db.versions(name)
                               else f"model {name!r} does not exist")
            self._require_writable()
            target = None

            def change(conn) -> None:
                nonlocal target
                for seq, v in Database.history(conn, name, channel):
                    if v == current:
                        continue
                    row = self.db.version(name, v)
                    if row is None or row.retired:
                        continue
                    target = (seq, v)
                    break
                if target is None:
                    raise Conflict(f"{name} {channel} has no earlier live version to roll back to")
                conn.execute("DELETE FROM channel_history WHERE name=? AND channel=? AND seq>?", (name, channel, target[0]))
                conn.execute("UPDATE channels SET version=? WHERE name=? AND channel=?", (target[1], name, channel))

            with self.db.transaction() as conn:
                rev = self._commit_change(conn, change)
        self._after_commit(rev)
        return target[1]

    def retire(self, name: str, version: int) -> int:
        """Stop offering a version; collect blobs no live version refers to. Returns the revision."""
        return self._write_op(lambda: self._retire(name, version))

    def _retire(self, name: str, version: int) -> int:
        with self._write:
            self._row(name, version)
            on = [c for c, v in self.db.channels(name).items() if v == int(version)]
            if on:
                raise Conflict(f"{name} version {version} is on channel {', '.join(sorted(on))}; "
                               "promote another version there first")
            self._require_writable()
            with self.db.transaction() as conn:
                rev = self._commit_change(conn, lambda c: c.execute(
                    "UPDATE versions SET retired=1 WHERE name=? AND version=?", (name, int(version))))
        self._after_commit(rev)
        try:
            self.store.delete_document(manifest_key(name, version))
            self.collect_garbage()
        except StoreUnavailable as e:
            self._go_read_only(e)
        return rev

    def collect_if_due(self) -> None:
        """Housekeeping: collect once an upload that no publish claimed is past `upload_grace`."""
        now = time.monotonic()
        # a shared bucket also gathers other aggregators' abandoned uploads: sweep for them at
        # half the orphan grace (at most hourly), a listing of blobs/ each time
        sweep = self.log_ is not None and now - self._last_sweep > min(3600, self.settings.orphan_grace / 2)
        if sweep or any(now - t > self.settings.upload_grace for t in list(self._staged.values())):
            self._last_sweep = now
            try:
                self.collect_garbage()
            except StoreUnavailable as e:
                self._go_read_only(e)

    def collect_garbage(self) -> list[str]:
        """Delete stored blobs no live version (and no recent upload) refers to."""
        with self._write:
            now = time.monotonic()
            for d, t in list(self._staged.items()):
                if now - t > self.settings.upload_grace:
                    self._staged.pop(d, None)
            # list first: a blob uploaded after the listing is not in it, one before is pinned;
            # a shared bucket's listing brings each blob's age along (one listing, not two)
            ages = self.store.blob_ages() if self.log_ is not None else None
            stored = list(ages) if ages is not None else self.store.list_blobs()
            with self._pin_lock:
                pinned = set(self._pins)
            keep = self.db.live_digests() | set(self._staged) | pinned
            gone = [d for d in stored if d not in keep]
            if self.log_ is not None:
                # another aggregator may be uploading a blob for a publish not committed yet: in a
                # shared bucket a blob is collected when a retired version was its last user, or
                # when nothing ever committed it and it is older than `orphan_grace` by the
                # bucket's clock (an upload a crash abandoned; no publish takes that long)
                retired = self._retired_digests()
                gone = [d for d in gone if d in retired or ages.get(d, 0.0) > self.settings.orphan_grace]
            for d in gone:
                self.store.delete_blob(d)
        if gone:
            log.info("collected %d unreferenced blob(s)", len(gone))
        return gone

    def recover(self, startup: bool = False) -> None:
        """Cleanup: manifests of uncommitted or retired versions, unreferenced blobs, a snapshot
        mirror that lags the database; at start-up (no write in flight) also temp leftovers."""
        with self._write:
            cleanup = getattr(self.store, "cleanup_temp", None)
            # store temp files are safe to remove whenever no write of ours is in flight (a shared
            # bucket: only uploads older than the upload grace, the others may be another aggregator's)
            if cleanup and self.log_ is not None:
                cleanup = lambda: self.store.cleanup_temp(older_than=self.settings.upload_grace)  # noqa: E731
            if cleanup and (startup or not self._temp_cleaned) and not self._pins:
                cleanup()
                self._temp_cleaned = True
            for p in (self.data_dir / "tmp").glob("*") if startup else ():
                if p.is_file():
                    p.unlink(missing_ok=True)
                elif p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
            listed = self.store.list_documents(MODEL_PREFIX)
            # shared bucket: a manifest is mirrored only after its revision exists, so catching up
            # after the listing makes every listed manifest of a committed version known here
            self._sync_locked()
            live = {(r.name, r.version) for r in self.db.versions()}
            for key in listed:
                parts = key[len(MODEL_PREFIX):].split("/")
                ok = len(parts) == 2 and parts[1].endswith(".json") and parts[1][:-5].isdigit()
                if not ok or (parts[0], int(parts[1][:-5])) not in live:
                    self.store.delete_document(key)
            for r in self.db.versions():
                if self.store.get_document(manifest_key(r.name, r.version)) != r.document:
                    self.store.put_document(manifest_key(r.name, r.version), r.document)
            self.collect_garbage()
            if self.log_ is not None:
                self.log_.advance_snapshot(*self.snapshot_bytes())
            elif self.store.get_document(SNAPSHOT_KEY) != self.snapshot_bytes()[1]:
                self.store.put_document(SNAPSHOT_KEY, self.snapshot_bytes()[1])
            self._mirror_pending = False

    def _retired_digests(self) -> set[str]:
        out = set()
        for r in self.db.versions(include_retired=True):
            if r.retired:
                out |= {d for _p, d, _s in self.db.files(r.name, r.version)}
        return out

"""Several aggregators on one S3 store: the Registry's bucket-mode half (a mixin).

With an S3 store that honours conditional writes the commit point of every change is the
creation of `revisions/<n>.json` in the bucket (`bucketlog`); the local SQLite database is a
cache of the newest revision, rebuilt from the bucket when dropped. Every write first catches up
with the bucket, then tries to create the next revision; a writer that lost the race rolls its
transaction back, catches up with the winner and tries again on top of it. A follower thread
polls snapshot.json (If-None-Match, so an idle poll moves no body) and imports what other
aggregators committed, waking this aggregator's long-poll waiters and target.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, TypeVar

from pifarm.errors import ConfigError, Conflict, IntegrityError
from pifarm.registry.db import Database
from pifarm.registry.statedoc import export_state, import_state
from pifarm.signed.canonical import canonical_bytes
from pifarm.signed.manifest import manifest_digest
from pifarm.signed.signing import TrustedKeys

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how often a follower asks the bucket for a new snapshot.json (a 304 when nothing changed)
FOLLOW_INTERVAL = 0.5
#: every this many polls it also asks for revisions/<next>.json directly: a writer killed between
#: creating a revision and advancing snapshot.json must not hide that revision for long
DIRECT_EVERY = 10
MAX_RACES = 200


class LostRace(Exception):
    """Another aggregator created the revision this one tried to create (retry on top of it)."""


class SharedMixin:
    log_: Any = None  # BucketLog when the bucket is the commit point, else None
    writer_mode = "single-writer (filesystem store)"
    store_probe: dict | None = None
    _hint: int | None = None
    _follower: threading.Thread | None = None
    _follow_stop: threading.Event | None = None
    _shared_setting = "auto"

    # -- setting up ------------------------------------------------------------------------------
    def _setup_log(self, store_settings: Any) -> None:
        """Probe the S3 endpoint; with conditional writes the bucket becomes the commit point."""
        self._shared_setting = getattr(store_settings, "shared", "auto")
        if store_settings.kind != "s3":
            return
        if self._shared_setting == "no":
            self.writer_mode = "single-writer ([store] shared = \"no\"): run no second aggregator on this store"
            return
        from pifarm.registry.bucketlog import REFUSED, BucketLog

        blog = BucketLog(self.store)
        self.store_probe = probe = blog.probe()
        if not (probe["if_none_match"] and probe["if_match"]):
            if self._shared_setting == "yes":
                raise ConfigError(REFUSED.format(where=self.store.location))
            self.writer_mode = (f"single-writer: S3 endpoint {self.store.location} ignores conditional writes, "
                                "so run no second aggregator on this store")
            log.warning("registry %s", self.writer_mode)
            return
        if probe["versioning"] is False:
            log.warning("bucket of %s has versioning off: an overwritten or deleted object cannot be recovered",
                        self.store.location)
        self.log_ = blog
        self.writer_mode = "shared: the commit point is the bucket (several aggregators may join)"
        with self._write:
            _changed, snap_rev = blog.snapshot_changed()
            self._hint = snap_rev
            if self._hint is None:
                self._hint = blog.listed_head()
            self._sync_locked()
            if blog.read(self.revision) is None and blog.listed_head() is None:
                if snap_rev is not None and snap_rev > self.revision:
                    # a bucket written in single-writer mode: only the aggregator that holds its
                    # history in SQLite can seed the log; seeding an older state would fork it
                    raise ConfigError(
                        f"the bucket {self.store.location} holds a registry at revision {snap_rev} written in "
                        f"single-writer mode (no revisions/ yet) and this aggregator's database is at revision "
                        f"{self.revision}: start the aggregator that wrote it first (it moves the history into "
                        "the bucket), then this one")
                self._seed_locked()

    def _seed_locked(self) -> None:
        """An empty log: this aggregator's current state becomes its first revision."""
        rev, snap = self.snapshot_bytes()
        with self.db.transaction() as conn:
            doc = {"revision": rev, "state": export_state(conn), "added": [], "snapshot": json.loads(snap)}
        if not self.log_.create(rev, doc):
            self._sync_locked(force=True)  # another aggregator seeded it first: take theirs
        else:
            self.log_.advance_snapshot(rev, snap)

    # -- writing -----------------------------------------------------------------------------------
    def _write_op(self, body: Callable[[], T]) -> T:
        """Run one write (its checks and its commit) under the write lock, after catching up with
        the bucket; in bucket mode a lost race re-runs it on top of the winner's revision."""
        for _ in range(MAX_RACES):
            with self._write:
                if self.log_ is not None:
                    self._sync_locked()
                try:
                    return body()
                except LostRace:
                    continue
        raise Conflict(f"gave up after {MAX_RACES} lost races for the next revision; the bucket is too busy, retry")

    def _log_revision(self, conn, revision: int, snapshot: bytes, added: list[bytes]) -> None:
        """Inside the commit transaction: create revisions/<revision>.json or raise LostRace (the
        transaction then rolls back)."""
        if self.log_ is None:
            return
        doc = {"revision": revision, "state": export_state(conn), "added": [json.loads(a) for a in added],
               "snapshot": json.loads(snapshot)}
        if not self.log_.create(revision, doc):
            raise LostRace(revision)

    # -- catching up -------------------------------------------------------------------------------
    def _sync_locked(self, force: bool = False) -> int | None:
        """Import the newest revision in the bucket when it is ahead of the local database (with
        `force`, also the one at the local revision). Returns the imported revision or None."""
        if self.log_ is None:
            return None
        k = self.revision
        start = k if force else k + 1
        doc, n = None, start
        hint, self._hint = self._hint, None
        if hint is not None and hint > start:
            doc = self.log_.read(hint)
            n = hint
        if doc is None:
            doc, n = self.log_.read(start), start
        if doc is None:
            return None
        while True:  # gallop past the hint: snapshot.json may lag the newest revision
            nxt = self.log_.read(n + 1)
            if nxt is None:
                break
            doc, n = nxt, n + 1
        self._import(doc)
        return n

    def _import(self, doc: dict[str, Any]) -> None:
        revision = int(doc["revision"])
        snap = canonical_bytes(doc["snapshot"])
        try:
            TrustedKeys([self.key.public]).verify(doc["snapshot"], what="snapshot")
        except IntegrityError as e:
            raise ConfigError(f"revision {revision} in {self.store.location} is not signed by this aggregator's "
                              "key: every aggregator on one store must share the signing key (copy keys/ or set "
                              "[registry] signing_key)") from e
        state = doc["state"]
        added = {(a["signed"]["name"], int(a["signed"]["version"])): canonical_bytes(a) for a in doc.get("added", [])}
        documents = {}
        for v in state["versions"]:
            key = (v["name"], int(v["version"]))
            row = self.db.version(*key)
            data = row.document if row is not None and row.manifest_digest == v["manifest_digest"] else None
            data = data or added.get(key) or self._fetch_manifest(key, v.get("added_in"))
            if manifest_digest(json.loads(data)["signed"]) != v["manifest_digest"]:
                raise IntegrityError(f"manifest of {key[0]} version {key[1]} in {self.store.location} does not "
                                     f"match revision {revision}")
            documents[key] = data
        with self.db.transaction() as conn:
            import_state(conn, state, documents)
            Database.set_meta(conn, "revision", revision)
            Database.set_meta(conn, "snapshot", snap)
        self._snap_cache = None
        log.debug("caught up with the bucket: revision %d", revision)
        self._notify(revision)

    def _fetch_manifest(self, key: tuple[str, int], added_in: int | None) -> bytes:
        from pifarm.registry.store import manifest_key

        data = self.store.get_document(manifest_key(*key))
        if data is None and added_in is not None:
            doc = self.log_.read(int(added_in)) or {}
            for a in doc.get("added", []):
                if (a["signed"]["name"], int(a["signed"]["version"])) == key:
                    data = canonical_bytes(a)
        if data is None:
            raise IntegrityError(f"manifest of {key[0]} version {key[1]} is neither in {self.store.location} "
                                 f"models/ nor in revision {added_in}")
        return data

    def rebuild_from_bucket(self) -> int:
        """Make the local database the bucket's newest revision (`pifarm aggregator rebuild-db`)."""
        if self.log_ is None:
            raise ConfigError(f"the store {self.store.location} is not a shared S3 bucket: there is nothing to "
                              "rebuild the database from")
        with self._write:
            self._hint = self.log_.listed_head()
            self._sync_locked(force=True)
        return self.revision

    # -- following -----------------------------------------------------------------------------------
    def start_following(self, interval: float = FOLLOW_INTERVAL) -> None:
        """Poll the bucket for revisions other aggregators commit (bucket mode only)."""
        if self.log_ is None or self._follower is not None:
            return
        self._follow_stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, args=(interval,), name="pifarm-follow", daemon=True)
        self._follower.start()

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follow_stop.set()
            self._follower.join(timeout=10)
            self._follower = None

    def _follow(self, interval: float) -> None:
        delay, polls, failing = interval, 0, False
        while not self._follow_stop.wait(delay):
            polls += 1
            try:
                changed, rev = self.log_.snapshot_changed()
                if (changed and rev is not None and rev > self.revision) or polls % DIRECT_EVERY == 0:
                    with self._write:
                        self._hint = rev if changed else None
                        self._sync_locked()
                    if rev is not None and rev < self.revision:  # its writer died before advancing it
                        self.log_.advance_snapshot(*self.snapshot_bytes())
                if failing:
                    log.info("following %s again", self.store.location)
                delay, failing = interval, False
            except Exception as e:  # keep following; back off while the bucket fails
                if not failing:
                    log.warning("following %s failed (backing off): %s", self.store.location, e)
                delay, failing = min(max(delay * 2, interval), 10.0), True

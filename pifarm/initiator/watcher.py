"""The version watcher: follow the registry's signed snapshot and keep the cache on it.

One loop, two metadata paths:
  1. the aggregator's long-poll `GET /v1/metadata?since=N&wait=S` (token bucket; on failure,
     exponential backoff with full jitter before the next try);
  2. while the aggregator is down, `snapshot.json` from S3 every `s3_poll_interval` seconds.
Every snapshot, whichever path brought it, goes through `verify_snapshot` (signature, rollback
against the highest revision seen, expiry). When the last attempt on every path failed, the node
is **degraded**: it keeps serving its active versions, applies nothing, and says why and since
when in node.json and the metrics. The next successful read ends it.

Desired versions are prefetched, verified and only then activated; the replaced one stays as
`previous`, so a rollback is a ref swap.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pifarm.cache.layout import RefValue
from pifarm.cache.metrics import NodeMetrics
from pifarm.cache.nodestate import NodeState, read_state, write_state
from pifarm.cache.source import Source
from pifarm.cache.store import Cache
from pifarm.errors import IntegrityError, PifarmError, SourceError
from pifarm.initiator.backoff import Backoff, TokenBucket
from pifarm.client.http import AggregatorClient
from pifarm.initiator.s3_source import S3Documents
from pifarm.initiator.settings import WatcherSettings
from pifarm.initiator.versions import Documents, install_version
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import Snapshot, iso, utcnow, verify_snapshot

log = logging.getLogger(__name__)


@dataclass
class _Path:
    """Bookkeeping of one metadata path (aggregator or S3)."""

    name: str
    backoff: Backoff
    next_try: float = 0.0
    ok: bool | None = None  # result of the last attempt; None = not tried yet
    error: str = ""


@dataclass
class WatcherStatus:
    cycles: int = 0
    applied_revisions: list[int] = field(default_factory=list)


class Watcher:
    def __init__(
        self,
        *,
        cache: Cache,
        sources: Sequence[Source],
        trusted: TrustedKeys,
        state_dir: str | Path,
        channel: str = "stable",
        models: Sequence[str] = (),
        aggregator: AggregatorClient | None = None,
        s3: S3Documents | None = None,
        settings: WatcherSettings = WatcherSettings(),
        metrics: NodeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        if aggregator is None and s3 is None:
            raise SourceError("the watcher needs an aggregator URL or an [s3] url")
        self.cache, self.sources, self.trusted = cache, list(sources), trusted
        self.state_dir = Path(state_dir)
        self.channel, self.models = channel, list(models)
        self.settings = settings
        self.metrics = metrics or cache.metrics
        self.clock = clock
        rng = rng or random.Random()
        self.docs = Documents(aggregator, s3)
        self.aggregator, self.s3 = aggregator, s3
        self._agg = _Path("http", Backoff(settings.backoff_base, settings.backoff_max, rng))
        self._s3 = _Path("s3", Backoff(settings.backoff_base, min(settings.backoff_max, settings.s3_poll_interval), rng))
        # refused snapshots back off on their own clock: a server that answers (the path is fine)
        # with a snapshot we cannot trust must not be polled once a second (issue 20)
        self._refused = Backoff(settings.backoff_base, settings.backoff_max, rng)
        self._refused_until = 0.0
        # a failed install is retried on its own backoff with the current snapshot: the revision
        # is not new, so a long-poll alone would wait for the next publish (a node stayed on its
        # old version for 14 minutes after one read timeout). Also at start after a failure.
        self._install_retry = Backoff(settings.backoff_base, settings.backoff_max, rng)
        self._retry_at: float | None = None
        self._bucket = TokenBucket(settings.rate, settings.burst, clock)
        self._rng = rng
        self.status = WatcherStatus()
        prior = read_state(self.state_dir)
        self.state = prior or NodeState()
        self.state.channel = channel
        self.state.paths.setdefault("http", "disabled" if aggregator is None else "unknown")
        self.state.paths.setdefault("s3", "disabled" if s3 is None else "unknown")
        self.revision = self.state.revision if prior else -1
        if prior and any(isinstance(m, dict) and m.get("error") for m in prior.models.values()):
            self._retry_at = clock()
        self._lock = threading.Lock()
        #: this node's id: decides its membership in a rollout's cohort (pifarm.signed.cohort)
        self.node_id: str | None = None
        #: called after every state write (the reporter reports at once when the state changed)
        self.on_state: Callable[[], None] | None = None
        self._write()

    # ----------------------------------------------------------------- state file

    def _write(self) -> None:
        with self._lock:
            self.state.updated = iso(utcnow())
            self.state.revision = self.revision
            for name in self.cache.layout.models():
                active = self.cache.layout.read_ref(name, "active")
                if active is None:
                    continue
                prev = self.cache.layout.read_ref(name, "previous")
                entry = self.state.models.setdefault(name, {})
                if entry.get("manifest_digest") != active.manifest_digest:
                    entry["source"] = "cache"
                entry.update(version=active.version, manifest_digest=active.manifest_digest,
                             previous=prev.version if prev else None)
            for src in self.sources:
                # NVMe sources know their path (live / unreachable / nothing-offered) themselves
                inner = getattr(src, "inner", src)
                path = getattr(inner, "path_state", None)
                if isinstance(path, str):
                    self.state.paths[inner.name] = path
            write_state(self.state_dir, self.state)
        self.metrics.degraded.set(1 if self.state.degraded else 0)
        self.metrics.revision.set(self.revision)
        if self.on_state is not None:
            self.on_state()

    def _set_degraded(self, degraded: bool, reason: str | None = None) -> None:
        if degraded and not self.state.degraded:
            log.warning("entering degraded read-only mode: %s", reason)
            self.state.degraded, self.state.degraded_since = True, iso(utcnow())
        if degraded:
            self.state.degraded_reason = reason
        elif self.state.degraded:
            log.info("leaving degraded mode (was: %s since %s)", self.state.degraded_reason, self.state.degraded_since)
            self.state.degraded, self.state.degraded_reason, self.state.degraded_since = False, None, None

    # ----------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        """Block until `stop` is set; every cycle is bounded by the settings' timeouts."""
        crashes = Backoff(self.settings.backoff_base, self.settings.backoff_max, self._rng)
        while not stop.is_set():
            try:
                delay = self.cycle(stop)
                crashes.reset()
            except Exception:  # a bug or a local fault (state dir full...) must not end the watch
                log.exception("watcher cycle failed; retrying")
                delay = crashes.next_delay()
            if delay > 0:
                stop.wait(delay)

    def cycle(self, stop: threading.Event | None = None) -> float:
        """One round of metadata reads; returns how long to wait before the next round."""
        self.status.cycles += 1
        now = self.clock()
        got: tuple[Any, str] | None = None
        if now < self._refused_until:
            return self._refused_until - now
        if self.aggregator is not None and now >= self._agg.next_try:
            wait = self._bucket.take()
            if wait > 0:
                return wait
            retry = self._retry_at is not None and now >= self._retry_at and self.revision >= 0
            try:
                # a retry asks for the current snapshot at once (since = one revision back)
                poll = self.aggregator.poll(self.revision - 1 if retry else self.revision,
                                            0 if retry else self._poll_wait())
                changed = self._path_ok(self._agg)
                if poll.document is None:  # 304: nothing new; poll again at once (the server paced us)
                    if self.state.degraded or changed:
                        self._set_degraded(False)
                        self._write()
                    return 0.0
                got = (poll.document, "http")
            except SourceError as e:
                self._path_failed(self._agg, e)
        if got is None and self.s3 is not None and (self._agg.ok is False or self.aggregator is None):
            if self.clock() >= self._s3.next_try:
                try:
                    got = (self.s3.snapshot(), "s3")
                    self._path_ok(self._s3)
                    self._s3.next_try = self.clock() + self.settings.s3_poll_interval
                except SourceError as e:
                    self._path_failed(self._s3, e)
        if got is not None:
            self._set_degraded(False)
            self._apply(*got)
            self._write()
            return 0.0 if got[1] == "http" else self._until_next()
        down = [p for p in (self._agg if self.aggregator else None, self._s3 if self.s3 else None) if p]
        if down and all(p.ok is False for p in down):
            self._set_degraded(True, "; ".join(f"{p.name}: {p.error}" for p in down))
        self._write()
        return self._until_next()

    def _poll_wait(self) -> int:
        # No revision yet, or the last attempt failed: ask for an answer now instead of holding
        # the request, so a returning aggregator ends degraded mode at once, not after `wait`.
        if self.revision < 0 or self._agg.ok is not True:
            return 0
        if self._retry_at is not None:  # wake for the install retry, not only for a publish
            return max(0, min(self.settings.poll_wait, math.ceil(self._retry_at - self.clock())))
        return self.settings.poll_wait

    def _until_next(self) -> float:
        now = self.clock()
        nexts = [p.next_try for p, on in ((self._agg, self.aggregator), (self._s3, self.s3)) if on is not None]
        if nexts and self._retry_at is not None:
            nexts.append(self._retry_at)
        return max(0.05, min(nexts) - now) if nexts else 1.0

    def _path_ok(self, p: _Path) -> bool:
        """Record a success; True when the state file's view of the paths changed."""
        changed = self.state.paths.get(p.name) != "live" or self.state.live_path != p.name
        p.ok, p.error = True, ""
        p.backoff.reset()
        p.next_try = 0.0
        self.state.paths[p.name] = "live"
        self.state.live_path = p.name
        return changed

    def _path_failed(self, p: _Path, e: Exception) -> None:
        p.ok, p.error = False, str(e)
        p.next_try = self.clock() + p.backoff.next_delay()
        self.state.paths[p.name] = "unreachable"
        if self.state.live_path == p.name:  # it is not live any more ("http=unreachable (live: http)")
            self.state.live_path = None
        self.metrics.metadata_failures.labels(p.name).inc()
        log.info("metadata path %s failed: %s", p.name, e)

    # ----------------------------------------------------------------- applying a snapshot

    def _apply(self, document: Any, path: str) -> None:
        try:
            snap = verify_snapshot(document, self.trusted, highest_seen=self.revision)
        except IntegrityError as e:
            msg = f"snapshot via {path} refused: {e}"
            # said once at ERROR; the same refusal again (each backoff) only at INFO
            log.log(logging.ERROR if msg != self.state.last_error else logging.INFO, "%s", msg)
            self.state.last_error = msg
            self.metrics.snapshots_refused.inc()
            ceiling = self._refused.ceiling()  # equal jitter: at least half the ceiling, never ~0
            self._refused.next_delay()
            self._refused_until = self.clock() + ceiling / 2 + self._rng.uniform(0, ceiling / 2)
            return
        self._refused.reset()
        self._refused_until = 0.0
        self.revision = snap.revision
        self.status.applied_revisions.append(snap.revision)
        self.state.last_error = None
        self.reconcile(snap)

    def reconcile(self, snap: Snapshot) -> None:
        changed = failed = False
        for name, ptr in sorted(snap.desired(self.channel, self.models or None, node_id=self.node_id).items()):
            want = RefValue(ptr.version, ptr.manifest_digest)
            if self.cache.layout.read_ref(name, "active") == want:
                continue
            try:
                done = install_version(self.cache, self.docs, self.trusted, name, ptr, self.sources)
            except PifarmError as e:
                log.error("could not update %s to v%d: %s", name, ptr.version, e)
                self.state.models.setdefault(name, {})["error"] = f"v{ptr.version}: {e}"
                failed = True
                continue
            changed = True
            self.metrics.activations.labels(name).inc()
            log.info("%s: v%d active (from %s)", name, ptr.version, done.source)
            entry = self.state.models.setdefault(name, {})
            entry.pop("error", None)
            entry.update(version=ptr.version, manifest_digest=ptr.manifest_digest, source=done.source,
                         previous=done.previous.version if done.previous else entry.get("previous"))
        if failed:  # equal jitter: at least half the ceiling, so a fast failure never spins
            ceiling = self._install_retry.ceiling()
            self._install_retry.next_delay()
            delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
            self._retry_at = self.clock() + delay
            log.info("retrying the failed install(s) in %.1f s", delay)
        else:
            self._install_retry.reset()
            self._retry_at = None
        if changed:
            self._collect()

    def _collect(self) -> None:
        """Default retention: active, previous and prefetched per model; the rest goes (a budget
        bounds the cache further). Without it a node kept every version it ever had (issue 20)."""
        try:
            rep = self.cache.gc(scratch=False)
        except (PifarmError, OSError) as e:
            log.warning("cache collection failed: %s", e)
            return
        if rep.removed_blobs or rep.removed_manifests:
            log.info("collected %d blob(s) (%d bytes) and %d manifest(s) no ref needs", rep.removed_blobs,
                     rep.freed_bytes, rep.removed_manifests)

    def close(self) -> None:
        self.docs.close()

"""Which model versions are served, and hot swap between them.

The manager watches the cache's `refs/` with watchdog (plus a periodic rescan every
`state_poll_seconds` in case an event is missed). Only changes wake it, never reads: its own reads
of the ref files would otherwise each wake the next pass (issue 19: a core busy and an unbounded
event backlog on an idle node). Every pass runs on the one rescan thread, so a burst of events
coalesces into one pass instead of queueing behind it. When a model's active ref names a manifest digest
other than the one being served, the version is loaded on the single background loader thread:
verified, built, batch-probed, warmed up with one inference, and only then swapped in by one
reference assignment. Requests already queued on the old version finish on its interpreters;
a version that fails to load leaves the old one serving and its error shows in /health.

The model repository extension (repository.py) unloads a model (in-flight requests finish on its
interpreters, the rescan leaves it alone, /health stops waiting for it) and loads it again (its
active cached version, verified as always). Each pool reports its invokes to the statistics.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from pifarm.cache.layout import CacheLayout, RefValue
from pifarm.cache.nodestate import DEGRADED, OK, condition, read_state
from pifarm.errors import ConfigError, InferenceError, NotFound, PifarmError
from pifarm.inference.batching import BatchPolicy, LiveCheck
from pifarm.inference.loader import NotServable, load_verified
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.model import BatchDecision, ModelVersion
from pifarm.inference.pool import WorkerPool
from pifarm.inference.runtime import Runtime, resolve
from pifarm.inference.settings import InferenceSettings
from pifarm.inference.stats import Statistics
from pifarm.signed.signing import TrustedKeys

log = logging.getLogger(__name__)


class NotReady(InferenceError):
    """The model is known but no version is loaded yet."""

    http_status = 503


def _trim_heap() -> None:
    """Give freed interpreter and model memory back to the OS (glibc keeps it otherwise, so
    resident memory would creep up over load/unload cycles)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


@dataclass
class Active:
    version: ModelVersion
    pool: WorkerPool


@dataclass
class Slot:
    name: str
    active: Active | None = None
    loading: set[str] = field(default_factory=set)  # manifest digests queued on the loader thread
    error: str | None = None            # why the newest active ref is not the one served
    failed: dict[str, float] = field(default_factory=dict)  # digest -> monotonic time it failed
    ignored: str | None = None          # not a servable model (raw files); left out of /health
    standby: Active | None = None       # the `prefetched` version, loaded and warm, not yet serving
    standby_error: str | None = None
    standby_failed: dict[str, float] = field(default_factory=dict)  # kept apart: never blocks activation


# What changes a ref: a replace (rename over it), a create, a delete, a write closed in place, a
# model directory coming or going. Opens and close-without-write (reads: ours every pass) are not
# even asked of the kernel, and modify events are left out (the close after the write follows).
REF_CHANGES = [FileMovedEvent, FileCreatedEvent, FileDeletedEvent, FileClosedEvent,
               DirCreatedEvent, DirDeletedEvent, DirMovedEvent]


class _RefEvents(FileSystemEventHandler):
    """Wakes the rescan thread on a change under <cache>/refs; never does the work itself."""

    def __init__(self, wake):
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, tuple(REF_CHANGES)):
            return  # the filter already keeps these out; this keeps a feedback loop impossible
        names = [Path(os.fsdecode(p)).name for p in (event.src_path, event.dest_path) if p]
        if names and all(n.startswith(".") for n in names):
            return  # a ref's temp file being written; its rename into place is the change
        self._wake()


class ModelManager:
    def __init__(self, settings: InferenceSettings, cache_root: Path, state_dir: Path | None,
                 metrics: ServerMetrics):
        self.settings = settings
        self.layout = CacheLayout(Path(cache_root))
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.metrics = metrics
        self.stats = Statistics(metrics.registry)
        self._unloaded: set[str] = set()  # unloaded through the repository API: not served, not awaited
        self.runtime: Runtime | None = None
        self._trusted: TrustedKeys | None = None
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {n: Slot(n) for n in settings.configured}
        self._loader: concurrent.futures.ThreadPoolExecutor | None = None
        self._observer: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by the ref watch: rescan now instead of at the next tick
        self._watching = False
        self._poller: threading.Thread | None = None
        # (blob digest, runtime, threads, max_batch) -> decision: a re-published model skips the timing
        self._calibrations: dict[tuple, BatchDecision] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if not self.layout.root.is_dir():
            raise ConfigError(f"cache directory {self.layout.root} does not exist; pass --cache with the node's cache")
        self.runtime = resolve(self.settings.runtime)
        if self.settings.trusted_keys:
            self._trusted = TrustedKeys.from_files(self.settings.trusted_keys)
        self._loader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._observer = Observer()
        self._observer.name = "refs-observer"
        self._observer.daemon = True
        self._observer.start()
        self._watch_refs()
        self._poller = threading.Thread(target=self._poll, name="model-rescan", daemon=True)
        self._poller.start()
        self.reconcile("start")

    def _ref_event(self) -> None:
        self.metrics.ref_events.inc()
        self._wake.set()

    def _watch_refs(self) -> None:
        """Watch <cache>/refs (only it: blob reads and installs are none of our business) once it
        exists; until then, and if inotify refuses (watch limit), the periodic rescan alone."""
        refs = self.layout.root / "refs"
        if self._watching or self._observer is None or not refs.is_dir():
            return
        self._watching = True
        try:
            self._observer.schedule(_RefEvents(self._ref_event), str(refs), recursive=True, event_filter=REF_CHANGES)
            for e in self._observer.emitters:
                e.name = "refs-inotify"
        except OSError as e:
            log.warning("no filesystem events for %s (%s); rescanning every %g s instead", refs, e,
                        self.settings.state_poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pools = [a.pool for s in self._slots.values() for a in (s.active, s.standby) if a]
        for p in pools:
            p.close(timeout=5)

    def _poll(self) -> None:
        """The rescan thread: one pass per wake-up (a burst of ref events is one wake-up) or per tick."""
        while not self._stop.is_set():
            woke = self._wake.wait(self.settings.state_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._watch_refs()
            try:
                self.reconcile("event" if woke else "poll")
            except Exception:  # keep rescanning whatever one pass hit
                log.exception("model rescan failed")

    # -- what to serve ---------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.settings.configured:
            return self.settings.configured
        try:
            found = self.layout.models()
        except OSError:
            found = []
        with self._lock:
            return sorted(set(found) | set(self._slots))

    def reconcile(self, cause: str = "direct") -> None:
        """Schedule a load for every model whose active (or prefetched) ref is not yet loaded."""
        if self._loader is None or self._stop.is_set():
            return
        self.metrics.rescans.labels(cause).inc()
        for name in self.names():
            if name in self._unloaded:
                continue
            try:
                ref = self.layout.read_ref(name, "active")
                pre = self.layout.read_ref(name, "prefetched")
            except (PifarmError, OSError) as e:
                with self._lock:
                    self._slots.setdefault(name, Slot(name)).error = str(e)
                continue
            jobs: list[tuple[RefValue, bool]] = []
            retired: Active | None = None
            with self._lock:
                slot = self._slots.setdefault(name, Slot(name))
                if ref is None:
                    if slot.active is None:
                        slot.error = f"no active version of {name} in cache {self.layout.root} yet"
                elif slot.standby is not None and slot.standby.version.manifest_digest == ref.manifest_digest:
                    retired = self._promote(slot, slot.standby, ref)  # prefetched and warm: swap now
                elif self._wants(slot, ref):
                    slot.loading.add(ref.manifest_digest)
                    jobs.append((ref, False))
                if pre is not None and ref is not None and pre.manifest_digest != ref.manifest_digest \
                        and (slot.standby is None or slot.standby.version.manifest_digest != pre.manifest_digest) \
                        and self._wants(slot, pre, slot.standby_failed):
                    slot.loading.add(pre.manifest_digest)
                    jobs.append((pre, True))
            try:
                if retired is not None:
                    # Its queued requests may take a while to finish: close it on the loader thread.
                    self._loader.submit(retired.pool.close)
                for job_ref, standby in jobs:
                    self._loader.submit(self._load, name, job_ref, standby)
            except RuntimeError:  # shutting down
                return

    def _wants(self, slot: Slot, ref: RefValue, failed: dict[str, float] | None = None) -> bool:
        """Whether `ref` still needs a load (not served, not loading, not refused just now)."""
        served = slot.active.version.manifest_digest if slot.active else None
        if ref.manifest_digest == served or ref.manifest_digest in slot.loading:
            return False
        failed_at = (slot.failed if failed is None else failed).get(ref.manifest_digest)
        return failed_at is None or time.monotonic() - failed_at >= self.settings.retry_failed_seconds

    def _load(self, name: str, ref: RefValue, standby: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            verified = load_verified(self.layout, name, ref, self._trusted)
            mv = ModelVersion(verified, self.runtime, self.settings.for_model(name))
            first = mv.prepare()
            ms = mv.settings
            policy = BatchPolicy(mv.batch.enabled, ms.max_batch, ms.max_delay_ms / 1e3, ms.batch_min_queue,
                                 ms.batch_max_mean_wait_ms / 1e3)
            entry = self.stats.entry(name, mv.version)
            pool = WorkerPool(f"{name}-v{mv.version}", mv.new_session, first, ms, policy,
                              on_execute=lambda jobs, rows, i, f, o: entry.execution(len(jobs), rows, i, f, o),
                              on_batch=self.metrics.batch_size.labels(name).observe,
                              on_queue=self.metrics.queue_depth.labels(name).set)
        except NotFound as e:
            if standby:
                # `prefetched` is set while the blobs are still arriving: try again on a later
                # rescan, and record nothing (this is not a failure).
                with self._lock:
                    self._slots.setdefault(name, Slot(name)).loading.discard(ref.manifest_digest)
                self.reconcile("retry")  # it may have become active meanwhile; that event was skipped
                return
            self._refused(name, ref, standby, e)
            return
        except Exception as e:  # anything the runtime throws must not take the server down
            self._refused(name, ref, standby, e)
            return
        self._loaded(name, ref, standby, mv, pool, t0)

    def _refused(self, name: str, ref: RefValue, standby: bool, e: Exception) -> None:
        msg = str(e) if isinstance(e, PifarmError) else f"{type(e).__name__}: {e}"
        reason = f"version {ref.version} ({ref.manifest_digest[:19]}…) refused: {msg}"
        log.warning("model %s: %s", name, reason)
        self.metrics.load_failures.labels(name).inc()
        with self._lock:
            slot = self._slots.setdefault(name, Slot(name))
            slot.loading.discard(ref.manifest_digest)
            (slot.standby_failed if standby else slot.failed)[ref.manifest_digest] = time.monotonic()
            if standby:
                slot.standby_error = reason
            elif isinstance(e, NotServable) and name not in self.settings.configured and slot.active is None:
                # A cache also holds non-model files; unless configured they are not ours to wait for.
                slot.ignored, slot.error = msg, None
            else:
                slot.error = reason

    def _loaded(self, name: str, ref: RefValue, standby: bool, mv: ModelVersion, pool: WorkerPool,
                t0: float) -> None:
        self.metrics.load_seconds.labels(name).observe(time.perf_counter() - t0)
        if mv.delegate_warning:
            self.metrics.delegate_fallback.labels(name).inc()
        new = Active(mv, pool)
        retired: Active | None = None
        with self._lock:
            slot = self._slots.setdefault(name, Slot(name))
            slot.loading.discard(ref.manifest_digest)
            slot.failed.pop(ref.manifest_digest, None)
            if name in self._unloaded:
                retired = new  # unloaded while it was loading: never serve it
            elif standby:
                try:
                    now_active = self.layout.read_ref(name, "active")
                except (PifarmError, OSError):
                    now_active = None
                if now_active is not None and now_active.manifest_digest == ref.manifest_digest:
                    retired = self._promote(slot, new, ref)  # activated while it was loading
                else:
                    retired, slot.standby, slot.standby_error = slot.standby, new, None
                    log.info("model %s: version %d prefetched and warm", name, mv.version)
            else:
                retired = self._promote(slot, new, ref)
        if retired is not None:
            retired.pool.close()  # queued requests of the old version finish first
        if retired is new:
            return
        if mv.needs_calibration:
            # After the swap (or while standing by): a version that must serve now serves unbatched
            # meanwhile, which is never slower; a standby promoted meanwhile picks the result up too.
            self._calibrate(mv, pool)

    def _promote(self, slot: Slot, new: Active, ref: RefValue) -> Active | None:
        """Make `new` the served version (caller holds the lock); returns the one the caller must
        retire (close its pool) once the lock is released."""
        old = slot.active
        slot.active = new  # the swap: new requests see the new version from here on
        if slot.standby is new:
            slot.standby = None
        slot.error = None
        slot.ignored = None
        self.metrics.active_version.labels(slot.name).set(new.version.version)
        log.info("model %s: serving version %d", slot.name, new.version.version)
        return old

    def _calibrate(self, mv: ModelVersion, pool: WorkerPool) -> None:
        """Decide batching for a live version (it serves unbatched meanwhile, which is never slower)."""
        ms = mv.settings
        key = (mv.blob_digest, self.runtime.name, ms.num_threads, ms.max_batch) if mv.blob_digest else None
        try:
            decision = self._calibrations.get(key) if key else None
            if decision is None:
                decision = mv.calibrate()
                if key:
                    self._calibrations[key] = decision
        except Exception as e:  # a failed timing run leaves the version serving unbatched
            log.warning("model %s: batching calibration failed: %s", mv.name, e)
            mv.batch = BatchDecision(True, False, f"calibration failed ({e}); not gathering batches")
            return
        mv.batch = decision
        # Waiting longer for a batch than one single-row invoke takes can only lose throughput
        # (closed-loop clients wait too), so the measured invoke time caps max_delay.
        delay = ms.max_delay_ms / 1e3
        if decision.single_ms:
            delay = min(delay, decision.single_ms / 1e3)
        pool.policy = BatchPolicy(decision.enabled, ms.max_batch, delay, ms.batch_min_queue,
                                  ms.batch_max_mean_wait_ms / 1e3)
        if decision.batchable:
            # The timing above is short and the machine's noise can flip it: live throughput
            # re-checks it while serving and switches batching off (or back on).
            def changed(enabled: bool, reason: str) -> None:
                mv.batch = BatchDecision(True, enabled, reason, decision.single_ms, decision.batched_ms_per_row)
                if key:
                    self._calibrations[key] = mv.batch
                log.info("model %s v%d: %s", mv.name, mv.version, reason)

            pool.live = LiveCheck(decision.enabled, on_change=changed)
        log.info("model %s v%d: %s", mv.name, mv.version, decision.reason)

    # -- request side ----------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> Active:
        with self._lock:
            slot = self._slots.get(name)
        if slot is None:
            if name not in self.names():
                raise NotFound(f"model {name!r} is not served here")
            with self._lock:
                slot = self._slots.setdefault(name, Slot(name))
        active = slot.active
        if active is None and slot.ignored:
            raise NotFound(f"model {name!r} is not served here: {slot.ignored}")
        if active is None and name in self._unloaded:
            raise NotReady(f"model {name} is unloaded; load it with POST /v2/repository/models/{name}/load")
        if active is None:
            raise NotReady(f"model {name} is not loaded yet: {slot.error or 'loading'}")
        if version is not None and version != str(active.version.version):
            raise NotFound(f"model {name} version {version!r} is not served here (serving {active.version.version})")
        return active

    # -- repository extension ----------------------------------------------------------------
    def unloaded(self, name: str) -> bool:
        return name in self._unloaded

    def unload(self, name: str, timeout: float = 30.0) -> None:
        """Stop serving `name`: new requests get 503, queued and running ones finish first."""
        if not self.known(name):
            raise NotFound(f"model {name!r} is not in the cache")
        with self._lock:
            self._unloaded.add(name)
            slot = self._slots.setdefault(name, Slot(name))
            gone = [a for a in (slot.active, slot.standby) if a is not None]
            slot.active = slot.standby = None
            slot.error = None
        self.metrics.active_version.labels(name).set(0)
        for a in gone:
            a.pool.close(timeout)
        del gone
        _trim_heap()
        log.info("model %s: unloaded", name)

    def load(self, name: str, timeout: float = 120.0) -> Active:
        """Serve `name` again from its active cached version (verified as every load is) and wait
        until it serves; a version that fails to load raises its reason."""
        try:
            ref = self.layout.read_ref(name, "active")
        except (PifarmError, OSError) as e:
            raise NotFound(f"model {name!r}: {e}") from e
        if ref is None:
            raise NotFound(f"model {name!r} has no active version in the cache; the repository is the cache "
                           f"(nothing is fetched from the network)")
        with self._lock:
            self._unloaded.discard(name)
            slot = self._slots.setdefault(name, Slot(name))
            slot.failed.pop(ref.manifest_digest, None)  # an explicit load retries at once
        self.reconcile("load")
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                a, loading, err = slot.active, ref.manifest_digest in slot.loading, slot.error
                failed = ref.manifest_digest in slot.failed
            if a is not None and a.version.manifest_digest == ref.manifest_digest:
                return a
            if failed and not loading:
                raise InferenceError(f"model {name}: {err or 'load failed'}")
            if time.monotonic() > deadline or self._stop.is_set():
                raise NotReady(f"model {name} did not finish loading within {timeout:g} s; see /health")
            time.sleep(0.01)

    def versions(self, name: str) -> list[int]:
        """The versions of `name` whose manifests are in the cache (the repository's contents)."""
        d = self.layout.root / "manifests" / name
        try:
            return sorted(int(p.stem) for p in d.glob("*.json") if p.stem.isdigit())
        except OSError:
            return []

    def known(self, name: str) -> bool:
        with self._lock:
            if name in self._slots:
                return True
        return name in self.names()

    def health(self) -> dict[str, Any]:
        """The body of GET /health; `ready` is True only when every wanted model is loaded."""
        names = self.names()
        models: dict[str, Any] = {}
        with self._lock:
            slots = {n: self._slots.get(n) or Slot(n) for n in names}
        ignored = {n: s.ignored for n, s in slots.items() if s.ignored and s.active is None}
        for n, slot in slots.items():
            if n in ignored:
                continue
            a = slot.active
            entry: dict[str, Any] = {"ready": a is not None, "version": a.version.version if a else None,
                                     "manifest_digest": a.version.manifest_digest if a else None,
                                     "loading": sorted(slot.loading), "error": slot.error,
                                     "prefetched": slot.standby.version.version if slot.standby else None}
            if slot.standby_error:
                entry["prefetch_error"] = slot.standby_error
            if n in self._unloaded:
                entry["unloaded"] = True
            if a is not None:
                self.metrics.workers.labels(n).set(a.pool.workers)
                self.metrics.queue_depth.labels(n).set(a.pool.queue_depth)
                entry.update({
                    "batching": {"batchable": a.version.batch.batchable, "enabled": a.version.batch.enabled,
                                 "reason": a.version.batch.reason},
                    "delegate_warning": a.version.delegate_warning,
                    "workers": a.pool.workers, "queue": a.pool.queue_depth,
                    "load_seconds": round(a.version.load_seconds, 4),
                })
            models[n] = entry
        state = read_state(self.state_dir) if self.state_dir is not None else None
        # the watcher's verdict (pifarm.cache.nodestate.condition): degraded, untrusted snapshot and
        # refused models all mean "serving, but not following the channel" (issue 20: one state)
        verdict, why = condition(state)
        degraded = verdict != OK
        self.metrics.degraded.set(1 if degraded else 0)
        wanted = [m for m in models.values() if not m.get("unloaded")]  # an unload is the operator's choice
        ready = bool(wanted) and all(m["ready"] for m in wanted)
        if ready:
            status = "degraded" if degraded else "ok"
        else:
            status = "no models" if not models else "loading" if any(m["loading"] for m in models.values()) else "unavailable"
        return {
            "status": status,
            "ready": ready,
            "degraded": degraded,
            "degraded_reason": (why if verdict == DEGRADED else f"{verdict}: {why}") if degraded else None,
            "revision": state.revision if state and state.revision >= 0 else None,
            "runtime": f"{self.runtime.name} {self.runtime.version}" if self.runtime else None,
            "models": models,
            "ignored": ignored,
        }

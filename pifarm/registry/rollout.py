"""Rollouts that promote or abort by themselves: waves, bake, gates, history.

A rollout takes one model version to `stable` in waves (default `1,25%,100%`). Each wave is a
cohort of the nodes following `stable` (`pifarm.signed.cohort`: a stable hash of the node id
below a threshold the signed snapshot carries), so nodes decide their own membership.

    activating -> every present wave node serves the version (a load/verify failure aborts)
    baking     -> `bake` seconds; then the gates compare the wave with the stable cohort over the
                  same window: error rate (at most `max_error_rate` above stable) and p99 latency
                  (at most `max_latency_ratio` times stable's), from the reports' histograms
    pass       -> next wave; the last wave passing promotes the version to `stable`
    fail       -> aborted: the snapshot drops the rollout, wave nodes go back to their previous
                  version (still pinned in their cache), the reason and numbers are kept

`step()` is pure (a rollout dict, the fleet's view, the time -> the new dict and what to do), so
the gates are tested without processes; `RolloutEngine` persists rollouts in
`<data>/fleet/rollouts.json` and applies them to the registry, and resumes after a restart.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from pifarm.durable import atomic_write
from pifarm.errors import Conflict, NotFound, PifarmError, ReadOnlyError, SourceError, UsageError
from pifarm.fleetwire.histogram import EMPTY, Hist, delta, merge, quantile
from pifarm.fleetwire.report import VersionStats
from pifarm.registry.fleet import Fleet, NodeView
from pifarm.signed.cohort import SPACE, member, threshold_for, wave_size
from pifarm.signed.snapshot import RolloutPointer

log = logging.getLogger(__name__)

HISTORY = 100
ROLLOUTS_KEY = "fleet/rollouts.json"  # in a shared bucket (issue 17)
LOW_TRAFFIC_FACTOR = 3  # a wave short of min_requests bakes at most this many bake times
# While a rollout runs: its phases move on reports (every node's report_interval, 10 s by default)
# and on bake and activation deadlines (minutes): a second is fine-grained enough. With none
# running the thread does not tick at all.
TICK = 1.0


@dataclass(frozen=True)
class Gates:
    bake: float = 300.0
    max_error_rate: float = 0.01     # above the stable cohort's, absolute (0.01 = 1 %)
    max_latency_ratio: float = 1.5   # wave p99 / stable p99
    min_requests: int = 100          # per wave node before the comparison counts
    max_missing: int | None = None   # None: 0 in the first wave, any later (proceed with those reporting)
    activate_timeout: float = 600.0  # wave nodes must serve the version within this

    def __post_init__(self) -> None:
        for k in ("bake", "max_error_rate", "max_latency_ratio", "activate_timeout"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise UsageError(f"{k} must be a number >= 0, got {v!r}")
        if self.max_latency_ratio < 1:
            raise UsageError(f"max_latency_ratio must be at least 1, got {self.max_latency_ratio}")
        if not isinstance(self.min_requests, int) or self.min_requests < 0:
            raise UsageError(f"min_requests must be an integer >= 0, got {self.min_requests!r}")
        if self.max_missing is not None and (not isinstance(self.max_missing, int) or self.max_missing < 0):
            raise UsageError(f"max_missing must be an integer >= 0, got {self.max_missing!r}")


def parse_waves(text: str | list) -> list[list]:
    """"1,25%,100%" -> [["count", 1], ["percent", 25.0], ["percent", 100.0]]."""
    items = text if isinstance(text, list) else [t.strip() for t in str(text).split(",")]
    out: list[list] = []
    for t in items:
        t = str(t).strip()
        try:
            w = ["percent", float(t[:-1])] if t.endswith("%") else ["count", int(t)]
        except ValueError:
            raise UsageError(f"wave {t!r} is neither a node count (e.g. 1) nor a percentage (e.g. 25%)") from None
        if w[0] == "percent" and not 0 < w[1] <= 100 or w[0] == "count" and w[1] < 1:
            raise UsageError(f"wave {t!r} must be a count >= 1 or a percentage in (0, 100]")
        out.append(w)
    if not out or len(out) > 10:
        raise UsageError("waves: give 1 to 10 waves, e.g. 1,25%,100%")
    return out


def wave_text(w: list) -> str:
    return f"{w[1]:g}%" if w[0] == "percent" else str(w[1])


def new_rollout(model: str, version: int, manifest_digest: str, previous: int | None, waves: list[list],
                gates: Gates, now: float, seed: str | None = None) -> dict[str, Any]:
    return {"id": "r-" + secrets.token_hex(6), "model": model, "version": version,
            "manifest_digest": manifest_digest, "previous": previous, "seed": seed or secrets.token_hex(8),
            "waves": waves, "gates": asdict(gates), "state": "running", "phase": "starting", "wave": 0,
            "cohort": 0, "members": [], "wave_started": now, "bake_started": None, "paused_at": None,
            "baseline": {}, "stable_ref": None, "results": [], "reason": None, "numbers": None,
            "started": now, "finished": None, "events": [[now, f"started: {model} v{version} in waves "
                                                              f"{','.join(wave_text(w) for w in waves)}"]]}


# -- the pure part ---------------------------------------------------------------------------------
def _eligible(views: list[NodeView]) -> list[NodeView]:
    return [v for v in views if v.channel == "stable"]


def _hist(s: VersionStats | None) -> Hist:
    if s is None:
        return EMPTY
    return Hist.from_pairs(s.buckets, s.requests)


def _counters(v: NodeView, version: int) -> dict[str, Any] | None:
    s = v.model.stats.get(str(version)) if v.model else None
    if s is None:
        return None
    return {"requests": s.requests, "errors": s.errors, "buckets": [[b, c] for b, c in s.buckets]}


def _window(views: list[NodeView], pick: Callable[[NodeView], int | None], baseline: dict[str, Any]
            ) -> dict[str, Any]:
    """Requests, errors, error rate, p99 and per-node requests of some nodes since `baseline`."""
    hists, errors, per_node = [], 0, {}
    for v in views:
        ver = pick(v)
        now = _counters(v, ver) if ver is not None else None
        if now is None:
            continue
        old = baseline.get(v.node, {}).get(str(ver))
        h_now = Hist.from_pairs(now["buckets"], now["requests"])
        h_old = Hist.from_pairs(old["buckets"], old["requests"]) if old else None
        d = delta(h_now, h_old)
        restarted = old is not None and (now["requests"] < old["requests"] or now["errors"] < old["errors"])
        e = now["errors"] - (0 if old is None or restarted else old["errors"])
        hists.append(d)
        errors += max(0, e)
        per_node[v.node] = d.total + max(0, e)
    h = merge(hists)
    total = h.total + errors
    p99 = quantile(h, 0.99)
    return {"requests": h.total, "errors": errors, "error_rate": (errors / total) if total else None,
            "p99": p99, "nodes": len(per_node), "per_node": per_node}


def _capture(views: list[NodeView]) -> dict[str, Any]:
    """Counters of every version each node reports, at the start of a bake window."""
    out: dict[str, Any] = {}
    for v in views:
        if v.model:
            out[v.node] = {ver: _counters(v, int(ver)) for ver in v.model.stats}
    return out


def _event(r: dict, now: float, text: str) -> None:
    r["events"].append([now, text])
    del r["events"][:-50]


def _finish(r: dict, now: float, state: str, reason: str, numbers: dict | None = None) -> None:
    r.update(state=state, reason=reason, numbers=numbers, finished=now, phase="done")
    _event(r, now, f"{state}: {reason}")


def _start_wave(r: dict, views: list[NodeView], now: float) -> None:
    present = [v.node for v in _eligible(views) if not v.missing]
    spec = r["waves"][r["wave"]]
    if spec[0] == "percent" and spec[1] >= 100:
        cohort = SPACE
    else:
        cohort = threshold_for(wave_size(tuple(spec), len(present)), present, r["seed"], floor=r["cohort"])
    r.update(cohort=cohort, phase="activating", wave_started=now, bake_started=None, baseline={},
             members=sorted(n for n in present if member(cohort, r["seed"], n)))
    _event(r, now, f"wave {r['wave'] + 1}/{len(r['waves'])} ({wave_text(spec)}): {len(r['members'])} node(s)")


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x * 1000:.2f} ms" if unit == "s" else f"{x:.4f}"


def gate(r: dict, wave: dict[str, Any], stable: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    """Compare a wave's window with the stable cohort's: (passed, reason, numbers)."""
    g = r["gates"]
    ref = stable if stable["requests"] or stable["errors"] else (r.get("stable_ref") or stable)
    numbers = {"wave": {k: wave[k] for k in ("requests", "errors", "error_rate", "p99", "nodes")},
               "stable": {k: ref[k] for k in ("requests", "errors", "error_rate", "p99", "nodes")},
               "latency_ratio": None, "error_rate_delta": None}
    notes = []
    if wave["error_rate"] is not None:
        base = ref["error_rate"] or 0.0
        numbers["error_rate_delta"] = wave["error_rate"] - base
        if wave["error_rate"] - base > g["max_error_rate"]:
            return False, (f"error gate: wave error rate {wave['error_rate']:.2%} vs stable {base:.2%} "
                           f"(more than {g['max_error_rate']:.2%} above)"), numbers
    else:
        notes.append("no wave requests in the window")
    if wave["p99"] is not None and ref["p99"]:
        ratio = wave["p99"] / ref["p99"]
        numbers["latency_ratio"] = ratio
        if ratio > g["max_latency_ratio"]:
            return False, (f"latency gate: wave p99 {_fmt(wave['p99'], 's')} vs stable {_fmt(ref['p99'], 's')}, "
                           f"ratio {ratio:.2f} > {g['max_latency_ratio']:g}"), numbers
    elif wave["p99"] is not None:
        notes.append("no stable cohort to compare latency with")
    why = f"passed: error rate {_fmt(wave['error_rate'])} vs {_fmt(ref['error_rate'])}, p99 ratio " \
          f"{'n/a' if numbers['latency_ratio'] is None else format(numbers['latency_ratio'], '.2f')}"
    return True, why + (f" ({'; '.join(notes)})" if notes else ""), numbers


def step(r: dict, views: list[NodeView], now: float) -> tuple[dict, str | None]:
    """Advance one rollout; returns (rollout, action): None, "publish" (its cohort changed),
    "promote" (done: stable -> version) or "abort" (stopped: wave nodes go back)."""
    if r["state"] != "running":
        return r, None
    r = copy.deepcopy(r)
    if r["phase"] == "starting":
        _start_wave(r, views, now)
        return r, "publish"
    eligible = _eligible(views)
    in_wave = [v for v in eligible if member(r["cohort"], r["seed"], v.node)]
    g, version = r["gates"], r["version"]
    for v in in_wave:
        if v.model and v.model.failed == version:
            _finish(r, now, "aborted", f"node {v.node} failed to load or verify {r['model']} v{version}: "
                                       f"{v.model.error or 'no reason given'}")
            return r, "abort"
    present = [v for v in in_wave if not v.missing]
    if r["phase"] == "activating":
        waiting = [v.node for v in present if not (v.model and v.model.serving == version and v.model.ready)]
        if not waiting:
            r.update(phase="baking", bake_started=now, baseline=_capture(eligible))
            _event(r, now, f"wave {r['wave'] + 1}: {len(present)} node(s) serve v{version}; baking {g['bake']:g} s")
        elif now - r["wave_started"] > g["activate_timeout"]:
            _finish(r, now, "aborted", f"{len(waiting)} wave node(s) did not serve v{version} within "
                                       f"{g['activate_timeout']:g} s: {', '.join(waiting[:5])}")
            return r, "abort"
        return r, None
    # baking
    elapsed = now - r["bake_started"]
    if elapsed < g["bake"]:
        return r, None
    wave = _window(present, lambda v: version, r["baseline"])
    outside = [v for v in eligible if not v.missing and v not in in_wave]
    stable = _window(outside, lambda v: v.model.serving if v.model else None, r["baseline"])
    short = [v.node for v in present if wave["per_node"].get(v.node, 0) < g["min_requests"]]
    if short and elapsed < LOW_TRAFFIC_FACTOR * g["bake"]:
        return r, None  # too little traffic to judge yet: keep baking (bounded)
    missing = [v.node for v in in_wave if v.missing]
    allowed = g["max_missing"] if g["max_missing"] is not None else (0 if r["wave"] == 0 else len(in_wave))
    if len(missing) > allowed:
        _finish(r, now, "aborted", f"{len(missing)} wave node(s) missing (max_missing {allowed}): "
                                   f"{', '.join(missing[:5])}")
        return r, "abort"
    ok, why, numbers = gate(r, wave, stable)
    if short:
        why += f" (low traffic: {len(short)} node(s) under {g['min_requests']} requests)"
    r["results"].append({"wave": r["wave"] + 1, "at": now, "passed": ok, "reason": why, "numbers": numbers,
                         "members": [v.node for v in present]})
    if stable["requests"]:
        r["stable_ref"] = stable
    if not ok:
        _finish(r, now, "aborted", why, numbers)
        return r, "abort"
    _event(r, now, f"wave {r['wave'] + 1} {why}")
    if r["wave"] + 1 >= len(r["waves"]):
        _finish(r, now, "promoted", f"every wave passed; v{version} is stable", numbers)
        return r, "promote"
    r["wave"] += 1
    _start_wave(r, views, now)
    return r, "publish"


# -- the engine ------------------------------------------------------------------------------------
class RolloutEngine:
    """Runs the rollouts of one aggregator: persisted, applied to the registry's snapshot, ticked."""

    def __init__(self, registry, fleet: Fleet, data_dir: str | Path, *, clock: Callable[[], float] = time.time,
                 tick: float = TICK):
        self.registry, self.fleet, self.clock, self.tick_seconds = registry, fleet, clock, tick
        self.path = Path(data_dir) / "fleet" / "rollouts.json"
        self._lock = threading.RLock()
        self.active: dict[str, dict] = {}
        self.history: list[dict] = []
        self._stop = threading.Event()
        # set by begin/resume (and a report making the fleet state dirty): the thread sleeps on it
        # while no rollout runs, instead of ticking (issue 19)
        self._wake = threading.Event()
        fleet.on_dirty = self._wake.set
        self.ticks = 0    # tick() passes of the thread (tests count them: none while nothing runs)
        self.wakeups = 0  # times the thread woke up at all
        self._thread: threading.Thread | None = None
        #: called with (rollout, action) before a decision moves the snapshot (HAProxy drains the
        #: nodes it will move); a failing hook is logged and never stops the rollout
        self.before_apply: list[Callable[[dict, str], None]] = []
        #: several aggregators on one bucket (issue 17): the rollouts live there, one leader ticks
        self._bucket: Any = None
        self.lease: Any = None
        self._leading = False
        self._load()

    def _load(self) -> None:
        where = self.path
        try:
            if self._bucket is not None:
                where = f"{self._bucket.location}{ROLLOUTS_KEY}"
                try:
                    data = self._bucket.get(ROLLOUTS_KEY, f"reading {where}")
                except NotFound:
                    return  # nothing shared yet: this aggregator's own rollouts go there at the next save
            else:
                data = self.path.read_bytes()
            doc = json.loads(data)
            self.active, self.history = dict(doc.get("active") or {}), list(doc.get("history") or [])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, SourceError) as e:
            log.error("rollout state %s unreadable (%s); no rollout resumed", where, e)

    def _save(self) -> None:
        data = json.dumps({"active": self.active, "history": self.history[-HISTORY:]}, indent=1,
                          sort_keys=True).encode()
        if self._bucket is not None:
            self._bucket.put(ROLLOUTS_KEY, data, f"writing {self._bucket.location}{ROLLOUTS_KEY}")
        atomic_write(self.path, data)

    def share(self, bucket: Any, holder: str, ttl: float = 10.0) -> None:
        """Keep the rollouts in the shared bucket and tick them only while this aggregator holds
        the rollout lease: a dead leader's lease expires after `ttl` s and another one finishes
        its rollouts from the state it saved there (timings are wall-clock, so they carry over)."""
        from pifarm.registry.lease import BucketLease

        with self._lock:
            local = (dict(self.active), list(self.history))
            self._bucket = bucket
            self.lease = BucketLease(bucket, "rollouts", holder, ttl=ttl, clock=self.clock)
            self.active, self.history = {}, []
            self._load()
            if not self.active and not self.history and (local[0] or local[1]):
                self.active, self.history = local  # the first aggregator brings its own rollouts along
                self._save()

    def _refresh(self) -> None:
        """Shared bucket: read the rollouts again (another aggregator may have changed them)."""
        if self._bucket is not None:
            self._load()

    def _lead(self) -> bool:
        """Shared bucket: hold (take or renew) the rollout lease; True when this one may tick."""
        if self.lease is None:
            return True
        if not self.lease.held and not any(self.fleet.views(m) for m in self.active):
            # fleet reports go to whichever aggregator answers: one that hears none of the nodes
            # in a rollout must not lead it (its gates would see every wave node missing)
            return False
        try:
            held = self.lease.hold()
        except PifarmError as e:
            log.warning("rollout lease unavailable (%s); not ticking", e)
            held = False
        if held and not self._leading:
            log.warning("rollout leader now (%s): %s", self.lease.holder, ", ".join(
                f"{m} v{r['version']} wave {r['wave'] + 1} ({r['state']})" for m, r in self.active.items()) or "none")
        self._leading = held
        return held

    # -- applying to the snapshot ----------------------------------------------------------
    def _pointers(self) -> dict[str, RolloutPointer]:
        return {m: RolloutPointer(r["version"], r["manifest_digest"], r["cohort"], r["seed"])
                for m, r in self.active.items() if r["phase"] != "starting"}

    def sync(self, promote: tuple[str, int] | None = None) -> None:
        """Make the signed snapshot carry exactly the active rollouts (one new revision if not)."""
        self.registry.set_rollouts(self._pointers(), promote=promote)

    def start(self) -> None:
        with self._lock:
            if self.active:
                log.warning("resuming rollout(s): %s", ", ".join(f"{m} v{r['version']} wave {r['wave'] + 1} "
                                                                  f"({r['state']})" for m, r in self.active.items()))
            try:
                self.sync()
            except Exception as e:  # read-only store: the next tick tries again
                log.error("rollouts not applied to the snapshot yet: %s", e)
            self._retry_sync()  # a promotion decided just before a crash is applied now
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease is not None:
            self.lease.release()

    def _busy(self) -> bool:
        """A rollout to advance, or a decision still to apply to the snapshot."""
        with self._lock:
            return any(r["state"] == "running" or r.get("synced") is False for r in self.active.values()) \
                or any(r.get("synced") is False for r in self.history[-HISTORY:])

    def _next_tick(self) -> float | None:
        """Seconds until the next tick; None: no tick until something wakes the thread."""
        if self._busy():
            if self.lease is not None and not self._leading:
                # another aggregator leads (or did): its lease expires in ttl s at the earliest
                return max(self.tick_seconds, self.lease.ttl / 2)
            return self.tick_seconds
        if self._bucket is not None:
            # shared bucket: another aggregator may start a rollout and die; look now and then
            return self.lease.ttl if self.lease is not None else 10.0
        return None

    def _run(self) -> None:
        # monotonic here: the rollouts' own times are wall-clock (they carry over to another
        # aggregator); the thread's sleeps must not stretch when the clock is set back
        clock = time.monotonic
        # resumed after a restart (or a shared bucket to look at): tick at once
        next_tick = clock() if self._busy() or self._bucket is not None else None
        idle = True  # the next tick was planned with nothing running (a shared bucket's look)
        while not self._stop.is_set():
            waits = [w for w in (None if next_tick is None else next_tick - clock(), self.fleet.flush_due())
                     if w is not None]
            self._wake.wait(max(0.0, min(waits)) if waits else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.wakeups += 1
            if (next_tick is None or idle) and self._busy():
                next_tick = clock()  # begin or resume woke it: tick now (not at the next idle look)
            if next_tick is not None and clock() >= next_tick:
                self.ticks += 1
                try:
                    self.tick()
                except Exception:  # keep ticking; a failure here is logged and retried
                    log.exception("rollout tick failed")
                delay = self._next_tick()
                next_tick = None if delay is None else clock() + delay
                idle = not self._busy()
            self.fleet.flush()

    def tick(self) -> None:
        with self._lock:
            self._refresh()
            if not self._busy():
                return  # nothing to advance or apply: no lease needed either
            if not self._lead():
                return
            self._retry_sync()
            for model in list(self.active):
                r = self.active[model]
                new, action = step(r, self.fleet.views(model), self.clock())
                if new == r:
                    continue
                self.active[model] = new
                if new["state"] in ("promoted", "aborted"):
                    del self.active[model]
                    self.history.append(new)
                if action:
                    new["synced"] = False
                self._save()  # the decision is durable before the snapshot moves
                if action:
                    log.warning("rollout %s v%d: %s", model, new["version"], new["events"][-1][1])
                    self._apply(new, action == "promote")

    def _apply(self, r: dict, promote: bool) -> None:
        """Move the snapshot to a decision; on failure (store unreachable: read-only) `synced`
        stays False and every tick, and the next start, tries again."""
        for hook in self.before_apply:
            try:
                hook(r, "promote" if promote else "abort" if r["state"] == "aborted" else "publish")
            except Exception:
                log.exception("rollout hook %r failed", hook)
        try:
            self.sync(promote=(r["model"], r["version"]) if promote else None)
        except (ReadOnlyError, SourceError) as e:
            log.error("rollout %s v%d decided but not applied yet (%s); retrying", r["model"], r["version"], e)
            return
        except PifarmError as e:  # e.g. the version was retired meanwhile: retrying cannot help
            log.error("rollout %s v%d cannot be applied: %s", r["model"], r["version"], e)
            r["synced"] = f"failed: {e}"
            self._save()
            return
        r["synced"] = True
        self._save()

    def _retry_sync(self) -> None:
        for r in list(self.active.values()) + self.history[-HISTORY:]:
            if r.get("synced") is False:
                self._apply(r, r["state"] == "promoted")

    # -- operator requests -----------------------------------------------------------------
    def begin(self, model: str, version: int, waves: str | list = "1,25%,100%", gates: Gates = Gates()) -> dict:
        waves = parse_waves(waves)
        info = self.registry.model(model)  # NotFound for an unknown model
        row = next((v for v in info["versions"] if v["version"] == version), None)
        if row is None:
            raise NotFound(f"model {model!r} has no live version {version}; offered: "
                           f"{', '.join(str(v['version']) for v in info['versions']) or 'none'}")
        stable = info["channels"].get("stable")
        if stable == version:
            raise Conflict(f"{model} v{version} is already stable; nothing to roll out")
        with self._lock:
            self._refresh()
            cur = self.active.get(model)
            if cur is not None:
                raise Conflict(f"a rollout of {model} is already {cur['state']} (v{cur['version']}, wave "
                               f"{cur['wave'] + 1}/{len(cur['waves'])}); abort it first")
            r = new_rollout(model, version, row["manifest_digest"], stable, waves, gates, self.clock())
            r, _ = step(r, self.fleet.views(model), self.clock())
            if self.lease is not None:
                # shared bucket: the aggregator a rollout is started on drives it unless another
                # leads already (taken before the rollout is visible, so no idle look of another
                # aggregator takes it first)
                try:
                    self.lease.hold()
                except PifarmError as e:
                    log.warning("rollout lease unavailable (%s); the rollout waits for a leader", e)
            r["synced"] = False
            self.active[model] = r
            self._save()
            self._apply(r, False)
        self._wake.set()  # the thread ticks while it runs
        log.warning("rollout %s v%d started (%s)", model, version, r["id"])
        return r

    def _get(self, model: str) -> dict:
        r = self.active.get(model)
        if r is None:
            raise NotFound(f"no rollout of {model!r} is running (see `pifarm rollout status {model}`)")
        return r

    def pause(self, model: str) -> dict:
        with self._lock:
            self._refresh()
            r = self._get(model)
            if r["state"] == "running":
                r["state"], r["paused_at"] = "paused", self.clock()
                _event(r, self.clock(), "paused by the operator")
                self._save()
            return r

    def resume(self, model: str) -> dict:
        with self._lock:
            self._refresh()
            r = self._get(model)
            if r["state"] == "paused":
                now = self.clock()
                if r.get("bake_started") is not None:
                    r["bake_started"] += now - (r["paused_at"] or now)  # the bake clock stood still
                if r["phase"] == "activating":
                    r["wave_started"] += now - (r["paused_at"] or now)
                r["state"], r["paused_at"] = "running", None
                _event(r, now, "resumed by the operator")
                self._save()
                self._wake.set()  # the thread ticks again while it runs
            return r

    def abort(self, model: str, reason: str = "aborted by the operator") -> dict:
        with self._lock:
            self._refresh()
            r = copy.deepcopy(self._get(model))
            _finish(r, self.clock(), "aborted", reason)
            r["synced"] = False
            del self.active[model]
            self.history.append(r)
            self._save()
            self._apply(r, False)
            return r

    def status(self, model: str) -> dict:
        with self._lock:
            if model in self.active:
                return self.active[model]
            past = [r for r in self.history if r["model"] == model]
            if not past:
                raise NotFound(f"no rollout of {model!r} was ever started")
            return past[-1]

    def all(self) -> dict[str, Any]:
        with self._lock:
            return {"active": copy.deepcopy(self.active), "history": copy.deepcopy(self.history[-HISTORY:])}

"""The node's reports to its aggregator (`POST /v1/fleet/report`).

Every `[node] report_interval` seconds, and at once when the node's state changes (the watcher
pokes after each state write: a version activated, degraded entered or left; a poke that changed
nothing costs one look). What follows a change, e.g. the inference server loading or refusing
the version just activated, is looked for with the inference server's /health alone (one
loopback request, nothing parsed but it) at 0.5, 1, 2, 4 ... s for `SETTLE` seconds, a handful of
looks, and a full report goes out when it moved (issue 19: it used to build a whole report every
0.5 s for 30 s). The slow probes (throttling, temperature: `vcgencmd` on some Pis) run at most
once per interval. A report is built from what the node already keeps: `node.json`
(watcher), the cache refs and size, the inference server's /health, its statistics and its
per-version latency histogram (read over loopback, so `pifarm serve` may run as its own
service), the Pi firmware's throttling bits and the SoC temperature.

Nothing is queued: a report that cannot be delivered is dropped and the next one is built from
the state of that moment (the latest state wins).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from pifarm import __version__
from pifarm.cache.nodestate import node_status, read_state
from pifarm.cache.store import Cache
from pifarm.fleetwire.report import MAX_VERSIONS, ModelReport, Report, VersionStats, clip

log = logging.getLogger(__name__)

SETTLE = 30.0      # seconds of watching /health after a state change
SETTLE_FIRST = 0.5  # the first look; each next one waits twice as long (0.5, 1, 2, 4, 8, 16 s)
THROTTLED_PATH = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
THERMAL_PATH = Path("/sys/class/thermal/thermal_zone0")
# get_throttled bits: now (0-3) and since boot (16-19)
THROTTLE_BITS = {0: "undervoltage", 1: "frequency-capped", 2: "throttled", 3: "soft-temperature-limit"}
_HIST = "pifarm_inference_version_request_seconds_bucket{"
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def throttling(path: Path = THROTTLED_PATH) -> dict[str, Any]:
    """The firmware's throttling bits on a Pi; status unknown with the reason elsewhere."""
    raw = None
    try:
        raw = path.read_text().strip()
    except OSError:
        exe = shutil.which("vcgencmd")
        if exe:
            try:
                out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
                raw = out.strip().partition("=")[2] or None
            except (OSError, subprocess.SubprocessError):
                raw = None
    if raw is None:
        return {"status": "unknown", "bits": None, "flags": [],
                "reason": "not a Raspberry Pi (no firmware get_throttled, no vcgencmd)"}
    try:
        bits = int(raw, 16)
    except ValueError:
        return {"status": "unknown", "bits": None, "flags": [], "reason": clip(f"unreadable get_throttled {raw!r}")}
    flags = [n for b, n in THROTTLE_BITS.items() if bits >> b & 1]
    flags += [f"{n}-since-boot" for b, n in THROTTLE_BITS.items() if bits >> (b + 16) & 1]
    return {"status": "throttled" if bits & 0xF else "ok", "bits": bits, "flags": flags, "reason": None}


def temperature(zone: Path = THERMAL_PATH) -> dict[str, Any]:
    try:
        milli = int((zone / "temp").read_text().strip())
        kind = (zone / "type").read_text().strip() if (zone / "type").exists() else "?"
    except (OSError, ValueError) as e:
        # no thermal zone (a container without /sys, say): the firmware's tool, like get_throttled
        exe = shutil.which("vcgencmd")
        if exe:
            try:
                out = subprocess.run([exe, "measure_temp"], capture_output=True, text=True, timeout=2).stdout
                m = re.match(r"^temp=(-?[0-9]+(?:\.[0-9]+)?)'C$", out.strip())
                if m:
                    return {"celsius": round(float(m.group(1)), 1), "zone": "vcgencmd", "reason": None}
            except (OSError, subprocess.SubprocessError):
                pass
        return {"celsius": None, "zone": None, "reason": clip(f"no SoC thermal zone ({e.__class__.__name__})")}
    return {"celsius": round(milli / 1000.0, 1), "zone": kind[:64], "reason": None}


def histograms(metrics_text: str) -> dict[tuple[str, str], list[tuple[float, int]]]:
    """(model, version) -> cumulative [(le, count)] from the inference server's /metrics."""
    out: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(_HIST):
            continue
        labels_part, _, value = line[len(_HIST):].rpartition("} ")
        labels = dict(_LABEL_RE.findall(labels_part))
        le = labels.get("le")
        if le is None or le == "+Inf":
            continue
        try:
            out.setdefault((labels.get("model", ""), labels.get("version", "")), []).append(
                (float(le), int(float(value))))
        except ValueError:
            continue
    return out


def _failed_version(text: str | None) -> int | None:
    """The version a load/verify failure concerns: "version 4 (…) refused: …" (inference server)
    or "v4: …" (watcher)."""
    m = re.match(r"^(?:version |v)(\d+)\b", text or "")
    return int(m.group(1)) if m else None


class Reporter:
    def __init__(self, *, aggregator: str | list[str], node_id: str, token: str = "", interval: float = 10.0,
                 state_dir: Path, cache: Cache | None, inference_url: str = "", address: str = "",
                 tls: Any = None, hostname: str | None = None, clock: Callable[[], float] = time.monotonic):
        # several aggregators of one farm (issue 17): the report goes to whichever answers
        self.urls = [u.rstrip("/") + "/v1/fleet/report" for u in ([aggregator] if isinstance(aggregator, str)
                                                                   else aggregator)]
        self.url = self.urls[0]
        self.node_id, self.token, self.interval = node_id, token, interval
        self.state_dir, self.cache = Path(state_dir), cache
        self.inference_url = inference_url.rstrip("/")
        self.address = address
        self.hostname = hostname or socket.gethostname()
        self.clock = clock
        self._wake = threading.Event()
        # the connection outlives a 10 s interval (the aggregator keeps idle ones 30 s): no new
        # TCP/TLS handshake per report
        self._http = httpx.Client(timeout=5.0, verify=tls if tls is not None else True,
                                  limits=httpx.Limits(max_connections=2, keepalive_expiry=25.0))
        self._local = httpx.Client(timeout=2.0)
        self._seq = 0
        self._last_fp: str | None = None
        self._last_health: str | None = None  # health_key() of the last report built
        self._slow: tuple[float, dict, dict] | None = None  # (when, throttling, temperature)
        self._failures = 0
        self.sent = 0
        # what the thread did (tests count them: issue 19)
        self.wakeups = 0  # times it woke up
        self.builds = 0   # whole reports built (three loopback requests, a /metrics parse)
        self.looks = 0    # /health-only looks after a change

    def poke(self) -> None:
        """Something changed: report now if the state differs from the last report delivered."""
        self._wake.set()

    def close(self) -> None:
        self._http.close()
        self._local.close()

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def health_key(health: dict | None) -> str:
        """What of /health a report reflects (not queue depths or worker counts, which move under
        load): a change here after a state change is worth a whole report."""
        if health is None:
            return "down"
        models = {n: {k: m.get(k) for k in ("ready", "version", "error", "loading", "prefetched", "prefetch_error")}
                  for n, m in (health.get("models") or {}).items() if isinstance(m, dict)}
        return json.dumps([health.get("status"), health.get("degraded"), models], sort_keys=True, default=str)

    def look(self) -> str:
        """One /health request: its health_key (the settle watch)."""
        self.looks += 1
        if not self.inference_url:
            return self.health_key(None)
        try:
            return self.health_key(self._local.get(self.inference_url + "/health").json())
        except (httpx.HTTPError, ValueError):
            return self.health_key(None)

    def _slow_probes(self) -> tuple[dict, dict]:
        """Throttling and temperature, read once per interval (`vcgencmd` is a process): a report at
        a state change in between carries the last reading. (0.9: the periodic report comes a hair
        under one interval after the last reading, and must not find it fresh.)"""
        now = self.clock()
        if self._slow is None or now - self._slow[0] >= 0.9 * self.interval or now < self._slow[0]:
            self._slow = (now, throttling(), temperature())
        return self._slow[1], self._slow[2]

    def _inference(self) -> tuple[dict | None, dict, str, str | None]:
        """(/health body, /v2/models/stats body, /metrics text, why unreachable)."""
        if not self.inference_url:
            return None, {}, "", "no inference server configured"
        try:
            h = self._local.get(self.inference_url + "/health")
            health = h.json()
            stats = self._local.get(self.inference_url + "/v2/models/stats")
            metrics = self._local.get(self.inference_url + "/metrics")
            return health, (stats.json() if stats.status_code == 200 else {}), metrics.text, None
        except (httpx.HTTPError, ValueError) as e:
            return None, {}, "", f"inference server {self.inference_url} not answering: {e.__class__.__name__}"

    def build(self) -> Report:
        self.builds += 1
        st = read_state(self.state_dir)
        health, stats, metrics_text, down = self._inference()
        self._last_health = self.health_key(health)
        hists = histograms(metrics_text)
        counts: dict[tuple[str, str], tuple[int, int, float]] = {}
        for e in stats.get("model_stats", []):
            s = e.get("inference_stats", {})
            counts[(e.get("name", ""), str(e.get("version", "")))] = (
                s.get("success", {}).get("count", 0), s.get("fail", {}).get("count", 0),
                s.get("success", {}).get("ns", 0) / 1e9)
        hmodels = (health or {}).get("models", {})
        names = sorted(set(hmodels) | set(st.models if st else {}) |
                       (set(self.cache.layout.models()) if self.cache else set()))
        models = {}
        for name in names:
            w = (st.models.get(name) if st else None) or {}
            h = hmodels.get(name) or {}
            ref = lambda kind: self.cache.layout.read_ref(name, kind) if self.cache else None  # noqa: E731
            try:
                active, previous, pre = ref("active"), ref("previous"), ref("prefetched")
            except Exception:  # a damaged ref is the cache's to report; the report goes on
                active = previous = pre = None
            error = h.get("error") or w.get("error")
            versions = sorted({v for (m, v) in set(counts) | set(hists) if m == name and v.isdigit()},
                              key=int)[-MAX_VERSIONS:]
            vstats = {}
            for v in versions:
                req, err, total = counts.get((name, v), (0, 0, 0.0))
                buckets = tuple(hists.get((name, v), ()))[:32]
                req = max(req, buckets[-1][1] if buckets else 0)
                vstats[v] = VersionStats(req, err, round(total, 6), buckets)
            models[name] = ModelReport(
                active=active.version if active else w.get("version"), previous=previous.version if previous else w.get("previous"),
                prefetched=pre.version if pre and (not active or pre.version != active.version) else h.get("prefetched"),
                source=clip(w.get("source"), 128), ready=bool(h.get("ready")), serving=h.get("version"),
                error=clip(error), failed=_failed_version(error), stats=vstats)
        # the same (state, reason) as `pifarm status` and /health: one function over the same state
        state, reason = node_status(st, health, down)
        cache = {"used": None, "budget": None}
        if self.cache is not None:
            try:
                cache = {"used": self.cache.used_bytes(), "budget": self.cache.max_bytes}
            except OSError:
                pass
        self._seq += 1
        throttled, temp = self._slow_probes()
        return Report(node=self.node_id, hostname=self.hostname[:255], pifarm=__version__, address=self.address,
                      interval=self.interval, seq=self._seq, state=state, reason=clip(reason),
                      channel=st.channel if st else "stable", revision=st.revision if st else -1, cache=cache,
                      paths=dict(list((st.paths if st else {}).items())[:8]), throttling=throttled,
                      temperature=temp, models=models, sent=round(time.time(), 3))

    # -- sending -----------------------------------------------------------------------------
    def send(self, rep: Report) -> bool:
        headers = {"Content-Type": "application/json"}
        r, err = None, None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for url in [self.url] + [u for u in self.urls if u != self.url]:
            try:
                r = self._http.post(url, content=rep.encode(), headers=headers)
            except httpx.HTTPError as e:
                err = e
                continue
            if r.status_code < 500:
                self.url = url
                break
        else:
            self._failed(f"aggregator unreachable: {err.__class__.__name__}: {err}" if r is None
                         else f"HTTP {r.status_code}: {r.text[:200]}")
            return False
        if r.status_code != 200:
            try:
                why = r.json().get("error", r.text)
            except ValueError:
                why = r.text[:200]
            self._failed(f"HTTP {r.status_code}: {why}")
            return False
        if self._failures:
            log.warning("report delivered again after %d failure(s)", self._failures)
        self._failures = 0
        self.sent += 1
        return True

    def _failed(self, why: str) -> None:
        self._failures += 1
        if self._failures in (1, 10) or self._failures % 100 == 0:  # say it, not every 10 s
            log.warning("report not delivered (%d in a row; dropped, the next one carries the state): %s",
                        self._failures, why)

    def run(self, stop: threading.Event) -> None:
        next_at = 0.0           # the next periodic report
        look_at: float | None = None  # the next /health look of the settle watch (None: none)
        look_gap = SETTLE_FIRST
        settle_until = 0.0
        while not stop.is_set():
            now = self.clock()
            wait = max(0.0, next_at - now)
            if look_at is not None:
                wait = min(wait, max(0.0, look_at - now))
            poked = self._wake.wait(wait)
            self._wake.clear()
            if stop.is_set():
                return
            self.wakeups += 1
            now = self.clock()
            if not poked and look_at is not None and now >= look_at:
                look_gap *= 2
                look_at = now + look_gap if now + look_gap < settle_until else None
                # a settle look: only a moved /health is worth a whole report
                if now < next_at and self.look() == self._last_health:
                    continue
            try:
                rep = self.build()
                fp = rep.material()
                changed = fp != self._last_fp
                if changed and poked:
                    # a real change (not every watcher write): what follows it, e.g. the inference
                    # server loading the version just activated, is looked for at growing gaps
                    settle_until, look_gap = now + SETTLE, SETTLE_FIRST
                    look_at = now + look_gap
                if now >= next_at or changed:
                    self.send(rep)
                    # a refused report (401, aggregator down) is retried at the interval, not on every
                    # look: an undeliverable change must not turn into a request per look
                    self._last_fp = fp
                    next_at = now + self.interval
            except Exception:  # a bug in one report must not end reporting
                log.exception("building the node report failed")
                next_at = now + self.interval

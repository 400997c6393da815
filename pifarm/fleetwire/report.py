"""The node report: what every node tells its aggregator, and the one parser that checks it.

    {"type": "node-report", "format": 1, "node": "<node id>", "hostname": "pi-07",
     "pifarm": "0.1.0", "address": "http://10.0.0.7:8080", "interval": 10, "seq": 42,
     "sent": 1764841200.5 (the node's clock when it built the report; optional),
     "state": "ready" | "degraded" | "not-ready", "reason": null | "...",
     "channel": "stable", "revision": 12,
     "cache": {"used": 123, "budget": 8589934592 | null},
     "paths": {"http": "live", "s3": "disabled", "nvme-tcp-userspace": "unreachable"},
     "throttling": {"status": "ok" | "throttled" | "unknown", "bits": 0 | null, "flags": [...], "reason": null},
     "temperature": {"celsius": 48.3 | null, "reason": null | "..."},
     "models": {"<name>": {"active": 3, "previous": 2, "prefetched": null, "source": "http",
                          "ready": true, "serving": 3, "error": null, "failed": null,
                          "stats": {"3": {"requests": 120, "errors": 0, "sum": 0.41,
                                          "buckets": [[0.0005, 80], [0.001, 118], ...]}}}}}

Reports are small by construction and bounded here: at most MAX_BYTES of JSON, MAX_MODELS
models, MAX_VERSIONS version stats per model, MAX_BUCKETS buckets, MAX_TEXT characters per
string. `parse_report` raises TooLarge (413) above the byte bound and UsageError (400) naming the
first bad field otherwise, so a malformed report changes nothing on the aggregator.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pifarm.errors import TooLarge, UsageError

MAX_BYTES = 64 * 1024
MAX_MODELS = 32
MAX_VERSIONS = 4
MAX_BUCKETS = 32
MAX_PATHS = 8
MAX_TEXT = 512
STATES = ("ready", "degraded", "not-ready")
THROTTLING = ("ok", "throttled", "unknown")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def clip(text: Any, limit: int = MAX_TEXT) -> str | None:
    """A reason short enough for a report (the node side never sends more than the bound)."""
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(frozen=True)
class VersionStats:
    requests: int = 0
    errors: int = 0
    sum: float = 0.0
    buckets: tuple[tuple[float, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "sum": self.sum,
                "buckets": [[b, c] for b, c in self.buckets]}


@dataclass(frozen=True)
class ModelReport:
    active: int | None = None
    previous: int | None = None
    prefetched: int | None = None
    source: str | None = None
    ready: bool = False
    serving: int | None = None  # the version the inference server answers with
    error: str | None = None    # a load or verification failure, with its reason
    failed: int | None = None   # ... and the version it concerns
    stats: dict[str, VersionStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "previous": self.previous, "prefetched": self.prefetched,
                "source": self.source, "ready": self.ready, "serving": self.serving, "error": self.error,
                "failed": self.failed, "stats": {v: s.to_json() for v, s in self.stats.items()}}


@dataclass(frozen=True)
class Report:
    node: str
    hostname: str = ""
    pifarm: str = ""
    address: str = ""
    interval: float = 10.0
    seq: int = 0
    state: str = "not-ready"
    reason: str | None = None
    channel: str = "stable"
    revision: int = -1
    cache: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    throttling: dict[str, Any] = field(default_factory=lambda: {"status": "unknown"})
    temperature: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelReport] = field(default_factory=dict)
    #: the node's wall clock when it built the report: with several aggregators the newest report
    #: of a node is told by it (then seq), whichever aggregator received it (issue 17)
    sent: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"type": "node-report", "format": 1, "node": self.node, "hostname": self.hostname,
             "pifarm": self.pifarm, "address": self.address, "interval": self.interval, "seq": self.seq,
             "state": self.state, "reason": self.reason, "channel": self.channel, "revision": self.revision,
             "cache": self.cache, "paths": self.paths, "throttling": self.throttling,
             "temperature": self.temperature, "models": {n: m.to_json() for n, m in self.models.items()}}
        if self.sent is not None:
            d["sent"] = self.sent
        return d

    def material(self) -> str:
        """The part whose change matters at once: to the node (report now, not at the interval)
        and to other aggregators (write it to the bucket now) — not counters, time or cache use."""
        d = self.to_json()
        for k in ("seq", "sent", "cache", "temperature"):
            d.pop(k, None)
        for m in d["models"].values():
            m.pop("stats", None)
        return json.dumps(d, sort_keys=True)

    def encode(self) -> bytes:
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        if len(data) > MAX_BYTES:
            raise TooLarge(f"report of {len(data)} bytes exceeds the bound of {MAX_BYTES} bytes")
        return data


# -- parsing -------------------------------------------------------------------------------------
def _bad(where: str, what: str) -> UsageError:
    return UsageError(f"malformed report: {where} {what}")


def _int(d: dict, key: str, where: str, *, optional: bool = False, minimum: int | None = 0) -> int | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or (minimum is not None and v < minimum):
        raise _bad(f"{where}{key}", f"must be an integer{'' if minimum is None else f' >= {minimum}'}, got {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise _bad(where, f"must be a finite number >= 0, got {v!r}")
    return float(v)


def _text(d: dict, key: str, where: str, *, optional: bool = True, limit: int = MAX_TEXT) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise _bad(f"{where}{key}", f"must be a string of at most {limit} characters")
    return v


def _table(d: dict, key: str, where: str) -> dict:
    v = d.get(key, {})
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(f"{where}{key}", "must be an object")
    return v


def _stats(v: Any, where: str) -> VersionStats:
    if not isinstance(v, dict):
        raise _bad(where, "must be an object")
    buckets = v.get("buckets", [])
    if not isinstance(buckets, list) or len(buckets) > MAX_BUCKETS:
        raise _bad(f"{where}.buckets", f"must be a list of at most {MAX_BUCKETS} [le, count] pairs")
    pairs = []
    prev_le, prev_c = -1.0, 0
    for i, b in enumerate(buckets):  # the hot loop of a report (`type() is` also refuses bools)
        if type(b) is not list or len(b) != 2:
            raise _bad(f"{where}.buckets[{i}]", "must be a [le, count] pair")
        le, c = b
        if type(le) not in (int, float) or not 0 <= le < math.inf:
            raise _bad(f"{where}.buckets[{i}][0]", f"must be a finite number >= 0, got {le!r}")
        if type(c) is not int or c < 0:
            raise _bad(f"{where}.buckets[{i}][1]", "must be a count >= 0")
        if le <= prev_le or c < prev_c:
            raise _bad(f"{where}.buckets", "must rise in le and be cumulative")
        pairs.append((float(le), c))
        prev_le, prev_c = le, c
    requests = _int(v, "requests", f"{where}.")
    if pairs and pairs[-1][1] > requests:
        raise _bad(f"{where}.buckets", f"count more requests than requests={requests}")
    return VersionStats(requests, _int(v, "errors", f"{where}."), _num(v.get("sum", 0.0), f"{where}.sum"),
                        tuple(pairs))


def _model(name: str, v: Any) -> ModelReport:
    where = f"models.{name}."
    if not isinstance(v, dict):
        raise _bad(where[:-1], "must be an object")
    stats = _table(v, "stats", where)
    if len(stats) > MAX_VERSIONS:
        raise _bad(f"{where}stats", f"holds {len(stats)} versions; at most {MAX_VERSIONS}")
    parsed = {}
    for ver, s in stats.items():
        if not (isinstance(ver, str) and ver.isdigit() and len(ver) <= 12):
            raise _bad(f"{where}stats", f"keys are version numbers, got {ver!r}")
        parsed[ver] = _stats(s, f"{where}stats.{ver}")
    ready = v.get("ready", False)
    if not isinstance(ready, bool):
        raise _bad(f"{where}ready", "must be true or false")
    return ModelReport(
        active=_int(v, "active", where, optional=True), previous=_int(v, "previous", where, optional=True),
        prefetched=_int(v, "prefetched", where, optional=True), source=_text(v, "source", where, limit=128),
        ready=ready, serving=_int(v, "serving", where, optional=True), error=_text(v, "error", where),
        failed=_int(v, "failed", where, optional=True), stats=parsed)


def _flat(d: dict, where: str, limit: int) -> dict[str, Any]:
    """A small object of scalars (cache, throttling, temperature, paths): bounded, no nesting
    beyond a short list of strings."""
    if len(d) > limit:
        raise _bad(where, f"holds {len(d)} keys; at most {limit}")
    for k, v in d.items():
        if not isinstance(k, str) or len(k) > 64:
            raise _bad(where, f"keys are short strings, got {k!r}")
        if isinstance(v, str):
            if len(v) > MAX_TEXT:
                raise _bad(f"{where}.{k}", f"is longer than {MAX_TEXT} characters")
        elif isinstance(v, list):
            if len(v) > 16 or not all(isinstance(x, str) and len(x) <= 64 for x in v):
                raise _bad(f"{where}.{k}", "must be a short list of short strings")
        elif v is not None and not isinstance(v, (bool, int, float)):
            raise _bad(f"{where}.{k}", "must be a scalar")
        elif isinstance(v, float) and not math.isfinite(v):
            raise _bad(f"{where}.{k}", "must be finite")
    return dict(d)


def parse_report(data: bytes) -> Report:
    """Check a report body; TooLarge above MAX_BYTES, UsageError naming the first bad field."""
    if len(data) > MAX_BYTES:
        raise TooLarge(f"report of {len(data)} bytes exceeds the bound of {MAX_BYTES} bytes")
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"malformed report: not JSON ({e})") from e
    return report_from_json(d)


def report_from_json(d: Any) -> Report:
    if not isinstance(d, dict) or d.get("type") != "node-report":
        raise UsageError('malformed report: expected an object with "type": "node-report"')
    if d.get("format") != 1:
        raise _bad("format", f"must be 1, got {d.get('format')!r}")
    node = d.get("node")
    if not isinstance(node, str) or not NODE_ID_RE.match(node):
        raise _bad("node", f"must be a node id (letters, digits, . _ : -; at most 128), got {node!r}")
    state = d.get("state")
    if state not in STATES:
        raise _bad("state", f"must be one of {', '.join(STATES)}, got {state!r}")
    models = _table(d, "models", "")
    if len(models) > MAX_MODELS:
        raise _bad("models", f"holds {len(models)} models; at most {MAX_MODELS}")
    parsed = {}
    for name, m in models.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _bad("models", f"keys are model names, got {name!r}")
        parsed[name] = _model(name, m)
    interval = _num(d.get("interval", 10.0), "interval")
    if not 0.05 <= interval <= 3600:
        raise _bad("interval", f"must be between 0.05 and 3600 seconds, got {interval!r}")
    throttling = _flat(_table(d, "throttling", ""), "throttling", 8)
    if throttling.get("status", "unknown") not in THROTTLING:
        raise _bad("throttling.status", f"must be one of {', '.join(THROTTLING)}")
    sent = d.get("sent")
    return Report(
        sent=None if sent is None else _num(sent, "sent"),
        node=node, hostname=_text(d, "hostname", "", limit=255) or "", pifarm=_text(d, "pifarm", "", limit=64) or "",
        address=_text(d, "address", "", limit=255) or "", interval=interval, seq=_int(d, "seq", ""),
        state=state, reason=_text(d, "reason", ""), channel=_text(d, "channel", "", limit=32) or "stable",
        revision=_int(d, "revision", "", minimum=-1), cache=_flat(_table(d, "cache", ""), "cache", 8),
        paths=_flat(_table(d, "paths", ""), "paths", MAX_PATHS), throttling=throttling,
        temperature=_flat(_table(d, "temperature", ""), "temperature", 4), models=parsed)

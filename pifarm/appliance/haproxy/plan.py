"""What HAProxy should look like for a fleet: backends, servers, weights, states (pure).

    plan(nodes, rollouts, settings) -> Plan

`nodes` is `GET /v1/fleet`'s list, `rollouts` is `GET /v1/rollouts`. One backend per model
(`model_<name>`, checked on the node's `/v2/models/<name>/ready`) and one for everything else
(`all_models`, checked on `/v2/health/ready`); one server per node that serves it, named after
the node id (sanitised: HAProxy allows letters, digits and `_ . : -`).

A server is `ready` with its weight (lower when the node is degraded or throttled), `drain` while
its node is not ready or about to swap versions in a rollout, `maint` while its node is missing
or refuses connections. A swap or a late report never takes a backend's last ready servers away:
a 100 % wave keeps serving from nodes that swap in place (the swap itself is atomic on the node),
and nodes a busy aggregator marks missing stay to HAProxy's health checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from pifarm.appliance.haproxy.settings import HaproxySettings

ALL = "all_models"
MODEL_PREFIX = "model_"
STATES = ("ready", "drain", "maint")
_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
MAX_NAME = 48


def safe_name(text: str, max_len: int = MAX_NAME) -> str:
    """An HAProxy object name for `text`: itself when valid, else the valid characters (others as
    `_`) plus 8 hex digits of its hash, so two ids that sanitise alike still differ."""
    s = _BAD.sub("_", str(text))
    if s == text and 0 < len(s) <= max_len:
        return s
    digest = hashlib.sha256(str(text).encode()).hexdigest()[:8]
    return f"{(s[: max_len - 9] or 'x')}-{digest}"


def backend_name(model: str | None) -> str:
    return ALL if model is None else MODEL_PREFIX + safe_name(model)


@dataclass(frozen=True)
class Server:
    name: str
    node: str
    host: str
    port: int
    weight: int
    state: str  # ready | drain | maint
    why: str = ""


@dataclass(frozen=True)
class Backend:
    name: str
    model: str | None
    check: str
    servers: dict[str, Server] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    backends: dict[str, Backend]
    skipped: tuple[str, ...] = ()  # nodes left out, with the reason

    def structure(self) -> tuple[str, ...]:
        """What only a reload can change: the backends (and so the frontend's routes)."""
        return tuple(sorted(self.backends))


def resolve(host: str) -> str:
    """An IP address for `host` (HAProxy's dynamic servers take addresses, not names)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]


def node_address(address: str, resolver: Callable[[str], str] = resolve) -> tuple[str, int]:
    """A report's `address` ("http://10.0.0.7:8080") -> (ip, port); ValueError naming the problem."""
    u = urlsplit(address or "")
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"address {address!r} is not http://HOST:PORT")
    try:
        port = u.port or 80
    except ValueError:
        raise ValueError(f"address {address!r} has no valid port") from None
    try:
        return resolver(u.hostname), port
    except OSError as e:
        raise ValueError(f"address {address!r}: host does not resolve ({e})") from None


def swaps_from_rollouts(nodes: list[dict], rollouts: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Nodes a running rollout is moving and that do not serve its version yet: node -> (model, version)."""
    out: dict[str, tuple[str, int]] = {}
    by_id = {n.get("node"): n for n in nodes}
    for model, r in (rollouts.get("active") or {}).items():
        if r.get("state") != "running" or r.get("phase") != "activating":
            continue
        for node in r.get("members") or ():
            m = ((by_id.get(node) or {}).get("report") or {}).get("models", {}).get(model) or {}
            if not (m.get("serving") == r.get("version") and m.get("ready")):
                out[node] = (model, int(r.get("version")))
    return out


def _weight(node: dict, s: HaproxySettings) -> tuple[int, str]:
    rep = node.get("report") or {}
    w, why = s.weight, []
    if node.get("state") == "degraded":
        w, why = min(w, s.weight_degraded), why + ["degraded"]
    if (rep.get("throttling") or {}).get("status") == "throttled":
        w, why = min(w, s.weight_throttled), why + ["throttled"]
    return w, ", ".join(why)


def plan(nodes: list[dict], rollouts: Mapping[str, Any] | None, s: HaproxySettings, *,
         unreachable: Mapping[str, str] | None = None, swapping: Mapping[str, tuple[str, int]] | None = None,
         resolver: Callable[[str], str] = resolve) -> Plan:
    """The wanted HAProxy state. `unreachable`: node -> why (the sync's probes); `swapping`:
    node -> (model, version) it is about to swap to (added to what the rollouts say)."""
    unreachable = unreachable or {}
    swaps = {**swaps_from_rollouts(nodes, rollouts or {}), **(swapping or {})}
    models = sorted({m for n in nodes for m in ((n.get("report") or {}).get("models") or {})})
    backends = {ALL: Backend(ALL, None, "/v2/health/ready", {})}
    for m in models:
        backends[backend_name(m)] = Backend(backend_name(m), m, f"/v2/models/{m}/ready", {})
    skipped: list[str] = []
    names: dict[str, str] = {}
    for n in sorted(nodes, key=lambda n: str(n.get("node"))):
        node, rep = str(n.get("node")), n.get("report") or {}
        try:
            host, port = node_address(rep.get("address", ""), resolver)
        except ValueError as e:
            skipped.append(f"{node}: {e}")
            continue
        name = safe_name(node)
        if names.setdefault(name, node) != node:  # cannot happen with the hash suffix; kept honest
            skipped.append(f"{node}: server name {name} already used by {names[name]}")
            continue
        weight, wwhy = _weight(n, s)
        served = rep.get("models") or {}
        for b in backends.values():
            if b.model is not None and b.model not in served:
                continue
            mr = (served.get(b.model) or {}) if b.model else {}
            if node in unreachable:
                state, why = "maint", f"unreachable: {unreachable[node]}"
            elif n.get("state") == "missing":
                state, why = "maint", "missing (no report for 3 intervals)"
            elif n.get("state") == "not-ready" and b.model is None or b.model and not mr.get("ready"):
                state, why = "drain", "not ready" + (f": {mr.get('error')}" if mr.get("error") else "")
            elif node in swaps and (b.model is None or swaps[node][0] == b.model):
                state, why = "drain", f"swapping {swaps[node][0]} to v{swaps[node][1]}"
            else:
                state, why = "ready", wwhy
            b.servers[name] = Server(name, node, host, port, weight, state, why)
    for b in backends.values():
        # Never leave a backend without a ready server on fleet state alone: a swap (atomic on the
        # node) or a late report (a busy node reported "missing") is then left to HAProxy's own
        # health checks. Only a node whose port refuses connections, or whose model is not
        # loaded, stays out.
        if b.servers and not any(v.state == "ready" for v in b.servers.values()):
            for k, v in b.servers.items():
                if v.why.startswith(("swapping", "missing")):
                    b.servers[k] = Server(v.name, v.node, v.host, v.port, v.weight, "ready",
                                          v.why + "; kept ready: no other ready server (health checks decide)")
    return Plan(backends, tuple(skipped))

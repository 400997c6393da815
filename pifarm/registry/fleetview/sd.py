"""Prometheus `http_sd` targets of a farm: every node's metrics endpoint and the aggregator's.

    [{"targets": ["10.0.0.7:8080"], "labels": {"__scheme__": "http", "__metrics_path__": "/metrics",
      "node": "<node id>", "hostname": "pi-07", "role": "node"}}, ...,
     {"targets": ["agg:8443"], "labels": {..., "hostname": "agg", "role": "aggregator"}}]

A node's endpoint is the inference server address from its last report (its /metrics). Missing
nodes stay listed, so `up == 0` shows them; a forgotten node is gone. The aggregator's own entry
is the address Prometheus reached it at (the request's Host), which is where it can scrape it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import urlsplit

from pifarm.errors import UsageError

ROLES = ("node", "aggregator")
# a host[:port] Prometheus accepts as a target: no userinfo, path or spaces
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?\Z")


def check_role(role: str | None) -> str | None:
    if role is not None and role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}, got {role[:40]!r}")
    return role


def target_of(url: str) -> tuple[str, str] | None:
    """(scheme, host:port) of an http(s) URL; None when it is not one Prometheus could scrape."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    hostport = f"{host}:{port or (443 if u.scheme == 'https' else 80)}"
    return (u.scheme, hostport) if _HOSTPORT.match(hostport) else None


def targets(nodes: Iterable[dict[str, Any]], aggregator: tuple[str, str] | None, aggregator_hostname: str,
            role: str | None = None) -> list[dict[str, Any]]:
    """The http_sd document from `Fleet.all()`-shaped node records and the aggregator's
    (scheme, host:port)."""
    out: list[dict[str, Any]] = []
    if role in (None, "node"):
        for n in nodes:
            rep = n.get("report") or {}
            t = target_of(rep.get("address") or "")
            if t is None:
                continue
            out.append({"targets": [t[1]], "labels": {
                "__scheme__": t[0], "__metrics_path__": "/metrics", "node": n["node"],
                "hostname": rep.get("hostname") or "", "role": "node"}})
    if role in (None, "aggregator") and aggregator is not None:
        out.append({"targets": [aggregator[1]], "labels": {
            "__scheme__": aggregator[0], "__metrics_path__": "/metrics", "hostname": aggregator_hostname,
            "role": "aggregator"}})
    return out

"""Per-node gauges from the nodes' reports, and rollout outcomes, on the aggregator's /metrics.

    pifarm_fleet_node_state{node,hostname,state}            1 for the node's state, 0 for the others
    pifarm_fleet_node_last_seen_timestamp_seconds{node,hostname}
    pifarm_fleet_node_throttled{node,hostname,flag}         Pi firmware bits now (undervoltage,
                                                             frequency-capped, throttled,
                                                             soft-temperature-limit); known only
    pifarm_fleet_node_temperature_celsius{node,hostname}    SoC temperature; known only
    pifarm_fleet_node_cache_bytes{node,hostname}            cache use, and its budget in
    pifarm_fleet_node_cache_budget_bytes{node,hostname}     ..._budget_bytes when it has one
    pifarm_fleet_node_path{node,hostname,path,state}        1 for each path's current state
    pifarm_rollout_finished_timestamp_seconds{model,outcome} when the last rollout of a model with
                                                             that outcome (promoted | aborted) ended

Node-exporter has no Pi throttling or undervoltage; the node already reads them for its report,
so the aggregator exports them for the whole farm. A missing node exports only its state (the
rest would be stale). The shipped rules (contrib/prometheus) alert on these.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

STATES = ("ready", "degraded", "not-ready", "missing")
FLAGS = ("undervoltage", "frequency-capped", "throttled", "soft-temperature-limit")
OUTCOMES = ("promoted", "aborted")


def _label(v: Any, limit: int = 64) -> str:
    return str(v if v is not None else "")[:limit]


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class FleetViewCollector:
    """A prometheus_client collector over `nodes()` (`Fleet.all()` records) and `rollouts()`
    (`RolloutEngine.all()`)."""

    def __init__(self, nodes: Callable[[], list[dict]], rollouts: Callable[[], dict]):
        self.nodes = nodes
        self.rollouts = rollouts

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily as G

        L = ["node", "hostname"]
        state = G("pifarm_fleet_node_state", "Node state from the aggregator's view (1 = current)", labels=L + ["state"])
        seen = G("pifarm_fleet_node_last_seen_timestamp_seconds", "When the node's last report arrived", labels=L)
        thr = G("pifarm_fleet_node_throttled", "Pi firmware throttling bits now (1 = set)", labels=L + ["flag"])
        temp = G("pifarm_fleet_node_temperature_celsius", "SoC temperature", labels=L)
        used = G("pifarm_fleet_node_cache_bytes", "Bytes in the node's cache", labels=L)
        budget = G("pifarm_fleet_node_cache_budget_bytes", "The node's cache budget", labels=L)
        path = G("pifarm_fleet_node_path", "Source path state of the node (1 = current)", labels=L + ["path", "state"])
        now = time.time()
        for n in self.nodes():
            rep = n.get("report") or {}
            key = [n["node"], _label(rep.get("hostname"), 255)]
            for s in STATES:
                state.add_metric(key + [s], 1.0 if n.get("state") == s else 0.0)
            if _number(n.get("seconds_since")) is not None:
                seen.add_metric(key, now - float(n["seconds_since"]))
            if n.get("state") == "missing":
                continue
            t = rep.get("throttling") or {}
            if t.get("status") in ("ok", "throttled") and isinstance(t.get("bits"), int):
                for bit, flag in enumerate(FLAGS):
                    thr.add_metric(key + [flag], float(t["bits"] >> bit & 1))
            c = _number((rep.get("temperature") or {}).get("celsius"))
            if c is not None:
                temp.add_metric(key, c)
            cache = rep.get("cache") or {}
            if _number(cache.get("used")) is not None:
                used.add_metric(key, _number(cache["used"]))
            if _number(cache.get("budget")) is not None:
                budget.add_metric(key, _number(cache["budget"]))
            for p, s in list((rep.get("paths") or {}).items())[:8]:
                path.add_metric(key + [_label(p), _label(s)], 1.0)
        yield from (state, seen, thr, temp, used, budget, path)
        done = G("pifarm_rollout_finished_timestamp_seconds", "When the last rollout of a model with this outcome ended",
                 labels=["model", "outcome"])
        last: dict[tuple[str, str], float] = {}
        for r in (self.rollouts() or {}).get("history") or []:
            k = (str(r.get("model")), str(r.get("state")))
            if k[1] in OUTCOMES and isinstance(r.get("finished"), (int, float)):
                last[k] = max(last.get(k, 0.0), float(r["finished"]))
        for (m, o), t in sorted(last.items()):
            done.add_metric([m, o], t)
        yield done

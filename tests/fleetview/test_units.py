"""The fleet view's pure parts: http_sd targets from node records, the page's escaping and
formatting, and the per-node gauges, without processes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pifarm.errors import UsageError
from pifarm.registry.fleetview import page, sd
from pifarm.registry.fleetview.metrics import FleetViewCollector


def rec(node: str, address: str, state: str = "ready", **report) -> dict:
    return {"node": node, "state": state, "seconds_since": 1.0,
            "report": {"hostname": f"h-{node}", "address": address, **report}}


@pytest.mark.parametrize("url, want", [
    ("http://10.0.0.7:8080", ("http", "10.0.0.7:8080")),
    ("https://pi-7.lan", ("https", "pi-7.lan:443")),
    ("http://[fd00::7]:8080/", ("http", "[fd00::7]:8080")),
    ("http://user:pw@pi:1", None), ("ftp://pi:21", None), ("http://pi:99999", None), ("", None),
    ("http://pi 7:80", None), ("javascript:alert(1)", None),
])
def test_target_of(url, want):
    assert sd.target_of(url) == want


def test_targets_list_nodes_then_the_aggregator_and_skip_unusable_addresses():
    nodes = [rec("a", "http://10.0.0.1:8080"), rec("b", "not a url"), rec("c", "http://10.0.0.3:8080", "missing")]
    out = sd.targets(nodes, ("https", "agg:8443"), "agg-host")
    assert [g["targets"] for g in out] == [["10.0.0.1:8080"], ["10.0.0.3:8080"], ["agg:8443"]]
    assert out[0]["labels"] == {"__scheme__": "http", "__metrics_path__": "/metrics", "node": "a",
                                "hostname": "h-a", "role": "node"}
    assert out[-1]["labels"]["role"] == "aggregator" and out[-1]["labels"]["__scheme__"] == "https"
    assert [g["labels"]["role"] for g in sd.targets(nodes, ("http", "agg:1"), "x", "aggregator")] == ["aggregator"]
    with pytest.raises(UsageError, match="role must be one of node, aggregator"):
        sd.check_role("<b>")


def test_the_page_escapes_and_formats():
    evil = '"><script>x()</script>'
    view = {"now": 100.0, "nodes": [rec("n" + "1", "http://x:1", hostname=evil, reason=evil, state="degraded",
                                        models={"m": {"serving": 2, "source": evil, "ready": True}})],
            "rollouts": {"active": {}, "history": [{"model": "m", "version": 3, "state": "aborted",
                                                    "reason": evil, "finished": 40.0}]},
            "models": {"m": {"channels": {"stable": 2}, "versions": [{"version": 2, "size": 2048}],
                             "exports": {"2": {"volume": evil, "nsid": 4}}}},
            "aggregator": {"hostname": evil, "revision": 7, "read_only": evil}, "target": {"allowed_hosts": [evil]}}
    html = page.page(view, 5)
    assert evil not in html and "<script>x()" not in html
    assert html.count("&lt;script&gt;x()&lt;/script&gt;") >= 6
    assert 'data-refresh="5"' in html and "60 s ago" in html and "2.0 KiB" in html


@pytest.mark.parametrize("seconds, text", [(None, "never"), (3, "3 s ago"), (600, "10 min ago"),
                                           (7200, "2 h ago"), (3 * 86400, "3 d ago")])
def test_ago(seconds, text):
    assert page.ago(seconds) == text


def test_gauges_per_node_and_rollout_outcomes():
    nodes = [rec("a", "http://x:1", throttling={"status": "throttled", "bits": 0b101}, temperature={"celsius": 70.5},
                 cache={"used": 5, "budget": 10}, paths={"http": "live"}),
             rec("b", "http://x:2", "missing", throttling={"status": "ok", "bits": 0}),
             rec("c", "http://x:3", throttling={"status": "unknown", "bits": None})]
    history = [{"model": "m", "state": "aborted", "finished": 10.0}, {"model": "m", "state": "aborted", "finished": 20.0},
               {"model": "m", "state": "promoted", "finished": 15.0}, {"model": "k", "state": "running"}]
    reg = CollectorRegistry()
    reg.register(FleetViewCollector(lambda: nodes, lambda: {"active": {}, "history": history}))
    text = generate_latest(reg).decode()
    assert 'pifarm_fleet_node_state{hostname="h-b",node="b",state="missing"} 1.0' in text
    assert 'pifarm_fleet_node_throttled{flag="undervoltage",hostname="h-a",node="a"} 1.0' in text
    assert 'pifarm_fleet_node_throttled{flag="frequency-capped",hostname="h-a",node="a"} 0.0' in text
    assert 'pifarm_fleet_node_throttled{flag="throttled",hostname="h-a",node="a"} 1.0' in text
    assert 'node="b"' not in text.split("pifarm_fleet_node_throttled", 1)[1].split("# HELP", 1)[0]  # stale
    assert 'node="c"' not in text.split("# TYPE pifarm_fleet_node_throttled", 1)[1].split("# HELP", 1)[0]
    assert 'pifarm_fleet_node_temperature_celsius{hostname="h-a",node="a"} 70.5' in text
    assert 'pifarm_fleet_node_cache_budget_bytes{hostname="h-a",node="a"} 10.0' in text
    assert 'pifarm_fleet_node_path{hostname="h-a",node="a",path="http",state="live"} 1.0' in text
    assert 'pifarm_rollout_finished_timestamp_seconds{model="m",outcome="aborted"} 20.0' in text
    assert 'pifarm_rollout_finished_timestamp_seconds{model="m",outcome="promoted"} 15.0' in text
    assert 'model="k"' not in text

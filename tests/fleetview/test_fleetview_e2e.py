"""Issue 14 with the real tools: an aggregator and two real `pifarm node run` (Pi firmware answered
by a per-node vcgencmd), Prometheus on the shipped configuration discovering them through
`/v1/fleet/prometheus-sd`, and the fleet page in headless Chromium.

One farm for the module (starting processes is the expensive part). The tests run in file order:
Prometheus first (every target up), the page last (it kills a node).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.fleet import models
from tests.fleet.farm import MODEL, serving_stable
from tests.fleetview.support import (REPO, PiFarm, Watched, alert_rules, as_series, browser, dashboard,
                                     panel_queries, start_prometheus, tool)
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

HOLD = {"bake": 3600, "min_requests": 1, "max_latency_ratio": 50, "max_error_rate": 0.5, "activate_timeout": 120}


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tool("prometheus")  # skip (fail under CI) before starting anything
    with serving_stable(PiFarm(tmp_path_factory.mktemp("fleetview"), nodes_wanted=2)) as f:
        yield f


@pytest.fixture(scope="module")
def prometheus(farm, tmp_path_factory):
    p = start_prometheus(tmp_path_factory.mktemp("prometheus"), farm.agg.url)
    try:
        yield p
    finally:
        p.stop()


def test_http_sd_lists_every_node_and_the_aggregator(farm):
    sd = farm.api("GET", "/v1/fleet/prometheus-sd").json()
    by_role = {}
    for group in sd:
        by_role.setdefault(group["labels"]["role"], []).append(group)
    assert sorted(g["labels"]["node"] for g in by_role["node"]) == sorted(n.node_id for n in farm.nodes)
    assert sorted(g["targets"][0] for g in by_role["node"]) == sorted(f"127.0.0.1:{n.port}" for n in farm.nodes)
    assert all(g["labels"]["hostname"] and g["labels"]["__metrics_path__"] == "/metrics" for g in sd)
    assert [g["targets"] for g in by_role["aggregator"]] == [[f"127.0.0.1:{farm.agg.port}"]]
    only = farm.api("GET", "/v1/fleet/prometheus-sd?role=node").json()
    assert {g["labels"]["role"] for g in only} == {"node"}
    bad = farm.api("GET", "/v1/fleet/prometheus-sd?role=<b>")
    assert bad.status_code == 400 and "role must be one of" in bad.json()["error"]


def test_prometheus_finds_the_farm_and_every_panel_and_rule_has_data(farm, prometheus):
    v2 = farm.publish(models.good(farm.root / "v2.tflite", seed=2))
    with farm.load(interval=0.02):
        farm.bad_request()

        def all_up():
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active) and active
        try:
            targets = wait_for(all_up, "3 targets up in Prometheus", 60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"{prometheus.api('targets')}\n{prometheus.output()}") from None
        assert sorted(t["labels"]["role"] for t in targets) == ["aggregator", "node", "node"]
        assert {t["labels"]["job"] for t in targets} == {"pifarm-aggregator", "pifarm-node"}

        farm.rollout(v2, waves="1,100%", **HOLD)
        wait_for(lambda: farm.status().get("phase") == "baking", "the rollout's first wave baking", 120, interval=0.3)

        missing: dict[str, str] = {}

        def every_panel_has_data():
            missing.clear()
            for title, expr in panel_queries(dashboard()):
                if not prometheus.query(expr):
                    missing[title] = expr
            return not missing
        try:
            wait_for(every_panel_has_data, "every panel query to return a series", 90, interval=1)
        except AssertionError:
            raise AssertionError(f"panels without data: {missing}\n{prometheus.output()}") from None

        # the rollout-aborted rule watches outcomes: abort this one (the page test starts its own)
        r = farm.api("POST", f"/v1/rollouts/{MODEL}/abort", write=True)
        assert r.status_code == 200, r.text

        def every_rule_has_data():
            missing.clear()
            for rule in alert_rules():
                if not prometheus.query(as_series(rule["expr"])):
                    missing[rule["alert"]] = rule["expr"]
            return not missing
        try:
            wait_for(every_rule_has_data, "every rule expression to return a series", 60, interval=1)
        except AssertionError:
            raise AssertionError(f"rules without data: {missing}\n{prometheus.output()}") from None

    groups = prometheus.api("rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups

    # the real farm: node 1's firmware says undervoltage + throttled, and a rollout was aborted
    firing = lambda: {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}  # noqa: E731
    wait_for(lambda: "PifarmRolloutAborted" in firing(), "the rollout-aborted alert firing", 60, interval=1)
    undervolted = prometheus.query('pifarm_fleet_node_throttled{flag="undervoltage"} == 1')
    assert [s["metric"]["node"] for s in undervolted] == [farm.nodes[1].node_id]
    assert not prometheus.query('pifarm_fleet_node_state{state="degraded"} == 1')  # a healthy farm


def test_the_page_shows_the_farm_live_and_a_node_going_missing(farm):
    v3 = farm.publish(models.good(farm.root / "v3.tflite", seed=3))
    farm.rollout(v3, waves="1,100%", **HOLD)
    wait_for(lambda: farm.status().get("phase") == "baking", "the rollout's first wave baking", 120, interval=0.3)
    member = farm.status()["members"]
    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 900})
        w = Watched(page)
        resp = page.goto(f"{farm.agg.url}/ui?refresh=1")
        assert resp.status == 200 and "default-src 'none'" in resp.headers["content-security-policy"]
        for n in farm.nodes:
            assert page.get_attribute(f'article.node[data-node="{n.node_id}"]', "data-state") == "ready"
        ro = page.locator(f'article.rollout[data-model="{MODEL}"]')
        assert ro.get_attribute("data-wave") == "1"
        assert "wave 1 of 2" in ro.inner_text() and "baking" in ro.inner_text()
        node1 = page.locator(f'article.node[data-node="{farm.nodes[1].node_id}"]').inner_text()
        assert "undervoltage" in node1 and "81.0 °C" in node1 and "throttled" in node1, node1
        assert f"v{v3}" in page.locator("#models").inner_text()
        # the page refreshes itself: wait for one refresh, then the screenshot for the README
        first = page.get_attribute("#fleet", "data-updated")
        wait_for(lambda: page.get_attribute("#fleet", "data-updated") not in (None, first), "a live refresh", 30,
                 interval=0.2)
        # the README's picture is refreshed only on request (PIFARM_UPDATE_SCREENSHOT=1): a test run
        # never changes tracked files
        shot = (REPO / "docs" if os.environ.get("PIFARM_UPDATE_SCREENSHOT") == "1"
                else Path(tempfile.mkdtemp(prefix="pifarm-shot-"))) / "fleet-page.png"
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # a phone: one column, nothing wider than the screen
        phone = b.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        wp = Watched(phone)
        phone.goto(f"{farm.agg.url}/ui")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        phone.close()

        # a node killed: `missing` on the page without a reload
        page.evaluate("window.__sameDocument = 'yes'")
        farm.kill_node(1)
        dead = f'article.node[data-node="{farm.nodes[1].node_id}"]'
        wait_for(lambda: page.get_attribute(dead, "data-state") == "missing", "node 1 missing on the page", 60,
                 interval=0.3)
        assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
        assert page.get_attribute(f'article.node[data-node="{farm.nodes[0].node_id}"]', "data-state") == "ready"
        assert page.locator("li.count[data-state=missing] b").inner_text() == "1"
        assert w.errors == [] and wp.errors == [], w.errors + wp.errors
    farm.api("POST", f"/v1/rollouts/{MODEL}/abort", write=True)
    assert member  # the wave had a node


def test_the_node_page_and_unknown_ids(farm):
    n = farm.nodes[0]
    r = httpx.get(f"{farm.agg.url}/ui/nodes/{n.node_id}", timeout=10)
    assert r.status_code == 200 and n.node_id in r.text and "requests" in r.text
    r = httpx.get(f"{farm.agg.url}/ui/nodes/no-such-node", timeout=10)
    assert r.status_code == 404 and "no node &#x27;no-such-node&#x27; in the fleet" in r.text

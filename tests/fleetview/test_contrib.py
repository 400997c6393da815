"""The shipped monitoring files (contrib/), checked by the real tools and against the daemons:
promtool checks the rules, runs their unit tests and checks the example configuration; the
Grafana dashboard names one fixed datasource uid (so it provisions from files) and every metric
the rules and panels use is one the daemons export, named by Prometheus' conventions.

That each query also returns data from a real farm is tests/fleetview/test_fleetview_e2e.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import yaml
from prometheus_client import CollectorRegistry

from tests.fleetview.support import CONTRIB, alert_rules, as_series, dashboard, panel_queries, tool

PROM = CONTRIB / "prometheus"
GRAFANA = CONTRIB / "grafana"
UID = "pifarm-prometheus"
METRIC = re.compile(r"\b(pifarm_[a-z0-9_]+)")


def promtool(*args: str, cwd=PROM) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    r = promtool("check", "rules", "pifarm-alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass():
    # a degraded node fires after 5 minutes, a healthy one and a short blip do not; missing node,
    # aborted rollout, budget refusals, undervoltage, throttling, failed drive, read-only registry
    r = promtool("test", "rules", "pifarm-alerts.test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load((PROM / "pifarm-alerts.test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in alert_rules()} - {"PifarmNodeUnreachable"}


def test_promtool_checks_the_example_configuration(tmp_path):
    for f in ("prometheus.yml", "pifarm-alerts.yml"):
        shutil.copy(PROM / f, tmp_path / f)
    r = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_a_broken_rule_is_caught_by_promtool(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: pifarm_fleet_nodes{ == 1\n")
    r = promtool("check", "rules", str(bad))
    assert r.returncode != 0  # the check above is not vacuous


def test_every_rule_is_a_series_compared_with_a_number():
    for rule in alert_rules():
        assert as_series(rule["expr"]).count(" bool ") == 1
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    names = {r["alert"] for r in alert_rules()}
    for want in ("PifarmNodeDegraded", "PifarmNodeMissing", "PifarmRolloutAborted", "PifarmDriveHealthCritical",
                 "PifarmCacheBudgetRefusals", "PifarmNodeThrottled", "PifarmNodeUndervoltage", "PifarmRegistryReadOnly"):
        assert want in names
    degraded = next(r for r in alert_rules() if r["alert"] == "PifarmNodeDegraded")
    assert degraded["for"] == "5m"


def test_the_dashboard_provisions_from_files_with_a_fixed_datasource():
    text = (GRAFANA / "pifarm-fleet.json").read_text()
    assert "${DS_" not in text and "__inputs" not in text  # import inputs break file provisioning
    dash = dashboard()
    assert dash["uid"] == "pifarm-fleet"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": UID}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == UID for t in p["targets"]), p["title"]
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] == UID
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "pifarm.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [UID]
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "pifarm.yml").read_text())
    assert prov["providers"][0]["type"] == "file" and prov["providers"][0]["options"]["path"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("nodes by state", "requests", "latency", "errors", "source", "cache", "long-poll", "paths",
                  "drive", "throttling", "rollout"):
        assert topic in titles, topic


def exported() -> set[str]:
    """Every metric name the daemons can export, from their own collectors."""
    from pifarm.cache.metrics import NodeMetrics
    from pifarm.inference.metrics import ServerMetrics
    from pifarm.initiator.blockdev_source import NvmeMetrics
    from pifarm.registry.fleet_api import FleetCollector
    from pifarm.registry.fleetview.metrics import FleetViewCollector
    from pifarm.registry.routes.state import Metrics
    from pifarm.target.health import DriveHealthCollector

    node, agg = CollectorRegistry(), CollectorRegistry()
    NodeMetrics(node)
    NvmeMetrics(node)
    Metrics(agg)
    agg.register(DriveHealthCollector(lambda: []))
    agg.register(FleetViewCollector(lambda: [], lambda: {}))
    stub = SimpleNamespace(fleet=SimpleNamespace(counts=lambda: ({}, {}), reports=0),
                           engine=SimpleNamespace(all=lambda: {"active": {}, "history": []}))
    agg.register(FleetCollector(stub))
    names = set()
    for reg in (node, agg, ServerMetrics().registry):
        for fam in reg.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(fam.type, ("",))
            names |= {fam.name + s for s in suffixes}
    return names


def test_every_metric_the_rules_and_panels_use_is_exported_and_well_named():
    names = exported()
    used = {m for r in alert_rules() for m in METRIC.findall(r["expr"])}
    used |= {m for _, q in panel_queries(dashboard()) for m in METRIC.findall(q)}
    assert used and not used - names, f"used but not exported: {sorted(used - names)}"
    for n in names:
        # ours carry the pifarm_ prefix; process_* and python_* are prometheus_client's standard
        # collectors, kept under their well-known names so stock dashboards find them
        assert re.fullmatch(r"(pifarm|process|python)_[a-z0-9_]+", n), n
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent|celcius)(_|$)", n), f"{n}: base units"
    counters = {n for n in names if n.endswith("_total")}
    assert "pifarm_cache_budget_refusals_total" in counters

"""The aggregator keeps the target in step by itself: a real `pifarm aggregator run`, the fake
configfs persisted in a file, publishes and retires through the real HTTP API."""

from __future__ import annotations

import json
import os

import httpx

from pifarm.appliance.target_root import open_root
from pifarm.target.spec import observe
from tests.support.aggregator import start_aggregator
from tests.support.wait import wait_for

NQN = "nqn.2014-08.org.pifarm:aggregator:ext"
WAIT = 60.0  # bound for a 2-core CI box; the loop ends as soon as the state is reached


def namespaces(cfs):
    if not cfs.exists():
        return None
    t = observe(open_root(f"fake:{cfs}"))
    sub = t.subsystems.get(NQN)
    return {nsid: ns.enabled for nsid, ns in sub.namespaces.items()} if sub else None


def test_publish_and_retire_reach_configfs(tmp_path):
    cfs = tmp_path / "cfs.json"
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f'[target]\nconfigfs_root = "fake:{cfs}"\naddresses = ["127.0.0.1"]\nsubsystem_nqn = "{NQN}"\n')
    agg = start_aggregator(tmp_path / "agg", config=cfg)
    try:
        model = tmp_path / "model.bin"
        model.write_bytes(os.urandom(10_000))
        with agg.client() as c:
            c.publish(model, "mobilenet", format="raw")
            wait_for(lambda: namespaces(cfs) == {1: True}, "namespace 1 after the first publish", WAIT)
            model.write_bytes(os.urandom(10_000))
            c.publish(model, "mobilenet", format="raw")
            wait_for(lambda: namespaces(cfs) == {1: True, 2: True}, "namespace 2 after the second publish", WAIT)
            c.retire("mobilenet", 1)
            wait_for(lambda: namespaces(cfs) == {2: True}, "namespace 1 gone after retire", WAIT)
        assert sorted(p.name for p in (tmp_path / "agg" / "volumes").glob("*.vol")) == ["mobilenet-v2.vol"]
        health = httpx.get(agg.url + "/health", timeout=10).json()
        assert health["target"]["subsystem"] == NQN and health["target"]["last_error"] is None
        assert health["drives"]["status"] in ("ok", "unknown", "warning", "failed")
        metrics = httpx.get(agg.url + "/metrics", timeout=10).text
        assert "pifarm_drive_health" in metrics
    finally:
        agg.stop()
    assert json.loads(cfs.read_text())["ports"]["1"]["links"]  # still exported after the daemon stops

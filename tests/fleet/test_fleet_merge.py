"""Fleet records from a shared bucket (issue 17): newest by the node's own clock wins, ages count
from the receipt, and an unreachable bucket leaves the aggregator showing what it has.

The bucket tests elsewhere run on a real SeaweedFS (tests/registry/test_multiagg_rollout.py);
here the merge rules, and a real S3 client against a loopback port nobody listens on."""

from __future__ import annotations

import json

from pifarm.fleetwire.report import ModelReport, Report
from pifarm.registry.fleet import Fleet, NodeRecord, _iso, record_from_doc
from pifarm.registry.fleetshare import FleetShare
from pifarm.s3.bucket import Bucket, make_client
from tests.support.procs import free_port
from tests.support.wait import wait_for


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def doc(node: str, *, sent: float | None, seq: int, last_seen: float, version: int = 1, via: str = "agg1") -> dict:
    rep = Report(node=node, hostname=node, interval=10.0, seq=seq, state="ready", sent=sent,
                 models={"m": ModelReport(active=version, serving=version, ready=True)})
    rec = NodeRecord(rep, last_seen - 100, last_seen, "token", via=via)
    return json.loads(rec.entry())


def test_newest_by_the_nodes_clock_wins_and_age_counts_from_the_receipt(tmp_path):
    clock = Clock()
    fleet = Fleet(tmp_path, clock=clock)
    now = clock()
    assert fleet.merge(record_from_doc(doc("n1", sent=now - 5, seq=7, last_seen=now - 5, version=2)))
    # an older report (another aggregator that missed the newer one) changes nothing ...
    older = doc("n1", sent=now - 15, seq=6, last_seen=now - 1, version=1, via="agg2")
    older["first_seen"] = now - 500
    assert not fleet.merge(record_from_doc(older))
    got = fleet.get("n1")
    assert got["report"]["models"]["m"]["serving"] == 2 and got["via"] == "agg1" and got["state"] == "ready"
    # ... but its earlier first-seen time is kept
    assert got["first_seen"] == _iso(now - 500)
    # a restarted node (seq from 1 again) is newer by its clock
    assert fleet.merge(record_from_doc(doc("n1", sent=now - 2, seq=1, last_seen=now - 2, version=3, via="agg2")))
    assert fleet.get("n1")["report"]["models"]["m"]["serving"] == 3
    # missing after 3 report intervals since it was received, wherever, not since it was merged
    assert fleet.merge(record_from_doc(doc("n2", sent=now - 31, seq=1, last_seen=now - 31)))
    assert fleet.get("n2")["state"] == "missing"
    assert [v.missing for v in fleet.views("m") if v.node == "n2"] == [True]
    # forgotten on another aggregator: dropped unless a newer report came in here since
    assert not fleet.drop("n1", (now - 3, 99))
    assert fleet.drop("n2", (now - 31, 1))
    assert [n["node"] for n in fleet.all()] == ["n1"]


def test_material_changes_exclude_counters_and_time():
    a = Report(node="n", seq=1, sent=1.0, state="ready", cache={"used": 1},
               models={"m": ModelReport(active=1, serving=1, ready=True)})
    b = Report(node="n", seq=2, sent=2.0, state="ready", cache={"used": 2},
               models={"m": ModelReport(active=1, serving=1, ready=True)})
    c = Report(node="n", seq=3, sent=3.0, state="ready", models={"m": ModelReport(active=2, serving=2, ready=True)})
    assert a.material() == b.material() != c.material()


def test_an_unreachable_bucket_leaves_the_aggregator_showing_what_it_has(tmp_path):
    fleet = Fleet(tmp_path)
    client = make_client(endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1", connect_timeout=1,
                         read_timeout=2, access_key_id="k", secret_access_key="s")
    share = FleetShare(fleet, Bucket(client, "s3://nobucket/farm"), "agg1", poll=0.2)
    fleet.record(Report(node="n1", interval=1.0, state="ready", models={"m": ModelReport(active=1, ready=True)}))
    share.start()
    try:
        wait_for(lambda: share.error is not None, "the fleet share noticing the bucket is unreachable", 60,
                 interval=0.1)
        st = share.status()
        assert not st["reachable"] and st["bucket"] == "s3://nobucket/farm/fleet/nodes/", st
        assert [(n["node"], n["state"], n["via"]) for n in fleet.all()] == [("n1", "ready", "agg1")]
    finally:
        share.stop()

"""Rollout leadership with two real aggregators on one real SeaweedFS bucket (issue 17).

Rollouts live in the bucket and one aggregator at a time drives them, holding a lease there
(conditional writes, 10 s expiry). The leader is SIGKILLed in the middle of a rollout; the nodes
(real `pifarm node run` processes serving inference, configured with both aggregators) move to
the other one, whose lease attempt succeeds once the dead leader's lease expired, and it
finishes the rollout: the version is promoted to stable.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from pifarm.initiator.identity import ensure_identity
from pifarm.registry.fleet_api import TOKEN_KEY, node_token
from tests.fleet import models
from tests.fleet.farm import MODEL, Farm, Node
from tests.support.multiagg import TOKEN, SharedFarm
from tests.support.procs import free_port, start_pifarm
from tests.support.wait import wait_for

pytestmark = [pytest.mark.s3, pytest.mark.slow]

GATES = {"bake": 6, "min_requests": 10, "max_latency_ratio": 50, "max_error_rate": 0.05, "activate_timeout": 120}


def test_rollout_leader_killed_mid_rollout_another_takes_the_lease_and_finishes(tmp_path, seaweed, s3_bucket):
    shared = SharedFarm(tmp_path, seaweed.endpoint, f"s3://{s3_bucket}/farm", seaweed.access_key,
                        seaweed.secret_key, n=2, start=False)
    a1, a2 = shared.aggs
    key = secrets.token_hex(32)  # node report tokens are signed with it: the same on both (joining)
    for a in (a1, a2):
        (a.data_dir / "fleet").mkdir(parents=True, exist_ok=True)
        (a.data_dir / "fleet" / TOKEN_KEY).write_text(key + "\n")
    s3 = shared.s3()
    bucket, prefix = s3_bucket, "farm/"

    def holder() -> dict:
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=prefix + "leases/rollouts.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return {"holder": ""}
    fleet = Farm(tmp_path / "fleet")
    try:
        a1.start(timeout=60)
        a2.start(timeout=60)
        for i in range(2):
            root = tmp_path / f"node{i}"
            ident = ensure_identity(root / "identity")
            n = Node(i, root, free_port(), ident.hostid)
            (root / "node.toml").write_text(
                f'[node]\ntrusted_keys = ["{shared.pubkey}"]\nhost_identity = "{root / "identity"}"\n'
                f'aggregators = ["{a2.url}"]\nreport_interval = 1.0\n'
                f'report_token = "{node_token(bytes.fromhex(key), ident.hostid)}"\n'
                f'[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
                f'[inference]\ngrpc_listen = "off"\n[inference.models.{MODEL}]\nnum_threads = 1\n')
            n.proc = start_pifarm(["node", "run", "--aggregator", a1.url, "--config", str(root / "node.toml"),
                                   "--cache", str(root / "cache"), "--state-dir", str(root / "state"),
                                   "--listen", f"127.0.0.1:{n.port}"], root / "node.log", f"{n.url}/v2/health/live",
                                  timeout=90)
            fleet.nodes.append(n)
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def publish(seed: int, channel: str | None = None) -> int:
            from pifarm.client.http import AggregatorClient

            with AggregatorClient(a1.url, TOKEN) as c:
                return c.publish(models.good(tmp_path / f"v{seed}.tflite", seed=seed), MODEL, channel)["version"]

        v1 = publish(1, "stable")
        fleet.wait_serving(v1)

        def reported(url: str, version: int):
            nodes = httpx.get(url + "/v1/fleet", timeout=10).json()["nodes"]
            return len(nodes) == 2 and all((n["report"]["models"].get(MODEL) or {}).get("serving") == version
                                           for n in nodes)

        wait_for(lambda: reported(a1.url, v1), "both nodes reporting v1 to the leader", 60, interval=0.3)
        v2 = publish(2)
        with fleet.load():
            r = httpx.post(f"{a1.url}/v1/rollouts/{MODEL}", headers=auth, timeout=30,
                           json={"version": v2, "waves": "1,100%", **GATES})
            assert r.status_code == 201, r.text
            wait_for(lambda: httpx.get(f"{a1.url}/v1/rollouts/{MODEL}", timeout=10).json()["phase"] == "baking",
                     "wave 1 baking", 120, interval=0.2)
            # the aggregator that started it leads it (it ticks at once and takes the lease)
            assert f":{a1.port}:" in holder()["holder"], holder()
            a1.kill()  # the leader dies mid-rollout (SIGKILL: its lease is not given up)
            wait_for(lambda: f":{a2.port}:" in holder()["holder"], "the other aggregator taking the lease", 60,
                     interval=0.3)

            def done():
                st = httpx.get(f"{a2.url}/v1/rollouts/{MODEL}", timeout=10).json()
                assert st.get("state") != "aborted", st
                return st if st.get("state") == "promoted" else None

            st = wait_for(done, "the rollout promoted by the new leader", 180, interval=0.3)
        assert [x["passed"] for x in st["results"]] == [True, True], st
        assert httpx.get(f"{a2.url}/v1/models/{MODEL}", timeout=10).json()["channels"]["stable"] == v2
        fleet.wait_serving(v2)
    finally:
        for n in fleet.nodes:
            if n.proc is not None:
                n.proc.stop()
        shared.stop()


def test_fleet_state_in_the_bucket_reports_to_one_rollout_led_by_the_other(tmp_path, seaweed, s3_bucket):
    """Two nodes report only to aggregator 1 (real HTTP reports, as a node sends them); aggregator
    2 lists them from the bucket's fleet/nodes/ with their versions and health, and a rollout
    started on (and led by) aggregator 2 activates, bakes and promotes on those reports."""
    import threading
    import time

    shared = SharedFarm(tmp_path, seaweed.endpoint, f"s3://{s3_bucket}/farm", seaweed.access_key,
                        seaweed.secret_key, n=2, start=False)
    a1, a2 = shared.aggs
    key = secrets.token_hex(32)
    for a in (a1, a2):
        (a.data_dir / "fleet").mkdir(parents=True, exist_ok=True)
        (a.data_dir / "fleet" / TOKEN_KEY).write_text(key + "\n")
    s3 = shared.s3()
    nodes = ["node-one-0001", "node-two-0002"]
    serving = {"version": 0}
    stop = threading.Event()
    failures: list[str] = []

    def send(http: httpx.Client, node: str, seq: int) -> None:
        v = serving["version"]
        n = 20 * seq  # a steady trickle of fast, error-free requests on the version served
        # reported every 0.7 s, declared 3 s: aggregator 2's copy (written every 1.5 intervals) stays
        # well inside the 9 s after which a node counts as missing, even on a loaded box
        rep = {"type": "node-report", "format": 1, "node": node, "hostname": node, "interval": 3.0, "seq": seq,
               "sent": time.time(), "state": "ready", "channel": "stable", "revision": -1,
               "models": {MODEL: {"active": v, "serving": v, "ready": True,
                                  "stats": {str(v): {"requests": n, "errors": 0, "sum": n * 0.002,
                                                     "buckets": [[0.005, n]]}}}}}
        r = http.post(f"{a1.url}/v1/fleet/report", json=rep,
                      headers={"Authorization": f"Bearer {node_token(bytes.fromhex(key), node)}"})
        if r.status_code != 200:
            failures.append(r.text)

    def report_to_a1_only() -> None:
        seq = 0
        with httpx.Client(timeout=10) as http:
            while not stop.wait(0.7):
                seq += 1
                for node in nodes:
                    try:
                        send(http, node, seq)
                    except httpx.HTTPError:  # a busy box: the next report carries the state
                        pass

    def holder() -> str:
        return json.loads(s3.get_object(Bucket=s3_bucket, Key="farm/leases/rollouts.json")["Body"].read())["holder"]

    t = threading.Thread(target=report_to_a1_only, daemon=True)
    try:
        a1.start(timeout=60)
        a2.start(timeout=60)
        from pifarm.client.http import AggregatorClient

        with AggregatorClient(a1.url, TOKEN) as c:
            v1 = c.publish(models.good(tmp_path / "v1.tflite", seed=1), MODEL, "stable")["version"]
            v2 = c.publish(models.good(tmp_path / "v2.tflite", seed=2), MODEL)["version"]
        serving["version"] = v1
        t.start()

        def listed_on_a2(version: int):
            doc = httpx.get(a2.url + "/v1/fleet", timeout=10).json()
            got = {n["node"]: n for n in doc["nodes"]}
            ok = set(got) == set(nodes) and all(
                n["state"] == "ready" and n["report"]["models"][MODEL]["serving"] == version for n in got.values())
            return doc if ok else None

        doc = wait_for(lambda: listed_on_a2(v1), "aggregator 2 listing both nodes serving v1", 60, interval=0.3)
        assert all(n["via"].endswith(f":{a1.port}") for n in doc["nodes"]), doc  # reported to a1, not to a2
        assert doc["shared"]["reachable"] and doc["shared"]["bucket"].endswith("fleet/nodes/"), doc["shared"]
        assert not failures, failures

        r = httpx.post(f"{a2.url}/v1/rollouts/{MODEL}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                       json={"version": v2, "waves": "100%", "bake": 2, "min_requests": 5,
                             "max_latency_ratio": 50, "max_error_rate": 0.05, "activate_timeout": 120})
        assert r.status_code == 201, r.text
        assert f":{a2.port}:" in holder()  # the aggregator it was started on leads it
        serving["version"] = v2  # the wave nodes serve v2 (told only to aggregator 1)

        def done():
            st = httpx.get(f"{a2.url}/v1/rollouts/{MODEL}", timeout=10).json()
            assert st.get("state") != "aborted", st
            return st if st.get("state") == "promoted" else None

        st = wait_for(done, "the rollout promoted by aggregator 2 on aggregator 1's reports", 120, interval=0.3)
        assert sorted(st["results"][0]["members"]) == sorted(nodes) and st["results"][0]["passed"], st
        assert f":{a2.port}:" in holder()
        assert httpx.get(f"{a2.url}/v1/models/{MODEL}", timeout=10).json()["channels"]["stable"] == v2
        wait_for(lambda: listed_on_a2(v2), "aggregator 2 listing both nodes serving v2", 60, interval=0.3)
        assert not failures, failures
    finally:
        stop.set()
        if t.is_alive():
            t.join(timeout=30)
        shared.stop()

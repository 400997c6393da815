"""Issue 15 with real processes on loopback: an aggregator running the HAProxy sync ([haproxy]),
three `pifarm node run` serving the sample model, HAProxy started from `pifarm haproxy render`,
and bounded load through HAProxy (4 clients with keep-alive) while, in turn, a node enters
degraded mode and leaves it, a node is SIGKILLed, a rollout moves a node (drain -> swap ->
ready), and the killed node comes back.

Zero failed requests; every answer comes from a version its node was supposed to serve (v1, or
v1/v2 for a node in the rollout's cohort); the share of answers per node follows the weights
within SHARE_TOLERANCE (absolute) over phases of 600 answers.
"""

from __future__ import annotations

import httpx
import pytest

from pifarm.signed.cohort import member
from tests.fleet import models
from tests.fleet.farm import MODEL, wait_reported
from tests.haproxy.harness import HaFarm, Load, dump
from tests.support.procs import run_cli
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

SHARE_TOLERANCE = 0.05
PHASE = 600


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    from tests.conftest import require
    from tests.haproxy.harness import haproxy_exe

    require(haproxy_exe() is not None, "haproxy missing (make system-deps installs it)")
    f = HaFarm(tmp_path_factory.mktemp("haproxy"), nodes_wanted=3).start()
    try:
        f.v1 = f.publish(models.good(f.root / "v1.tflite", seed=1), channel="stable")
        f.wait_serving(f.v1)
        wait_reported(f, f.v1)
        f.render()
        f.start_haproxy()
        wait_for(lambda: f.sync_health().get("connected") and all(
            s.admin == "ready" and s.weight == 100 for s in f.servers().get("model_m", {}).values())
            and len(f.servers().get("model_m", {})) == 3, "the sync to see HAProxy with 3 ready servers", 60)
        yield f
    finally:
        f.stop()


def _server(f: HaFarm, i: int):
    return f.servers()["model_m"].get(f.server_name(i))


def _wait_server(f: HaFarm, i: int, what: str, cond, timeout: float = 60) -> None:
    try:
        wait_for(lambda: (s := _server(f, i)) is not None and cond(s), what, timeout, interval=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{dump(f.servers())}\n{f.logs()}") from None


def _near(shares: dict[str, float], want: dict[str, float]) -> bool:
    return set(shares) == set(want) and all(abs(shares[k] - w) <= SHARE_TOLERANCE for k, w in want.items())


def test_zero_failed_requests_while_nodes_degrade_die_swap_and_return(farm):
    f = farm
    names = [f.server_name(i) for i in range(3)]
    with Load(f.frontend, clients=4) as load:
        load.wait_more(200)
        # 1. node 1 in degraded mode (its metadata path cut, still serving from its cache): weight 50
        load.mark("degrading")
        f.degrade(1)
        _wait_server(f, 1, "node 1's weight lowered", lambda s: s.weight == 50)
        load.mark("degraded")
        load.wait_more(PHASE)
        load.mark("healing")
        f.heal(1)
        _wait_server(f, 1, "node 1's weight back", lambda s: s.weight == 100, timeout=120)
        # 2. node 0 SIGKILLed: maintenance as soon as its port refuses connections
        load.mark("kill")
        f.kill_node(0)
        _wait_server(f, 0, "node 0 in maintenance", lambda s: s.admin == "maint")
        wait_for(lambda: f.fleet()[f.nodes[0].node_id]["state"] == "missing", "node 0 missing in the fleet", 60)
        load.wait_more(300)
        # 3. a rollout moves one node: drained before the snapshot moves it, ready once it serves v2
        v2 = f.publish(models.good(f.root / "v2.tflite", seed=2))
        load.mark("rollout")
        r = f.rollout(v2, waves="1,100%", bake=3600, min_requests=10**6, activate_timeout=600)
        assert len(r["members"]) == 1 and r["members"][0] != f.nodes[0].node_id, r
        moved = next(n.index for n in f.nodes if n.node_id == r["members"][0])
        wait_for(lambda: any(e.startswith(f"ready {r['members'][0]}: serves {MODEL} v{v2}")
                             for _, e in f.sync_health().get("events", [])), "the moved node ready on v2", 120)
        _wait_server(f, moved, "the moved node ready in HAProxy", lambda s: s.admin == "ready")
        load.wait_more(300)
        # 4. the killed node comes back: ready once it reported again
        load.mark("returning")
        f.start_node(0)
        _wait_server(f, 0, "node 0 ready again", lambda s: s.admin == "ready" and s.up, timeout=120)
        load.mark("all-back")
        load.wait_more(PHASE)
    status = f.status()
    events = [e for _, e in f.sync_health().get("events", [])]
    f.api("POST", f"/v1/rollouts/{MODEL}/abort", write=True)

    failed = load.failed()
    # (a request at a node's SIGKILL is retried only because HAProxy holds the whole request:
    # option http-buffer-request; without it a loaded box cut 1-4 clients at the kill)
    assert not failed, \
        f"{len(failed)} of {len(load.results)} failed: {failed[:5]}\n{f.logs()}"
    # every answer from a version its node was supposed to serve
    by_name = {f.server_name(n.index): n.node_id for n in f.nodes}
    cohort = {nid for nid in by_name.values() if member(status["cohort"], status["seed"], nid)}
    for res in load.results:
        allowed = {str(f.v1), str(v2)} if by_name[res.server] in cohort else {str(f.v1)}
        assert res.version in allowed, (res, cohort)
    # drain -> swap -> ready, in that order, for the moved node
    mid = r["members"][0]
    drain = next(i for i, e in enumerate(events) if e.startswith(f"drain {mid}"))
    ready = next(i for i, e in enumerate(events) if e.startswith(f"ready {mid}"))
    assert drain < ready, events
    # the share per node follows the weights (100, 50, 100 while degraded; 100 each at the end)
    deg = load.shares("degraded")
    assert _near(deg, {names[0]: 0.4, names[1]: 0.2, names[2]: 0.4}), deg
    back = load.shares("all-back")
    assert _near(back, {n: 1 / 3 for n in names}), back
    assert len(load.results) >= 2000
    print(f"\n{len(load.results)} answers, {len(failed)} failed; shares degraded {deg}, all back {back}; events:\n"
          + "\n".join(events))


def test_cli_sync_once_and_metrics(farm):
    f = farm
    out = run_cli(["haproxy", "sync", "--once", "--registry", f.agg.url, "--socket", f.socket,
                   "--config", str(f.root / "aggregator.toml")])
    assert out.returncode == 0, out.stderr
    assert '"connected": true' in out.stdout
    metrics = httpx.get(f.agg.url + "/metrics", timeout=10).text
    assert "pifarm_haproxy_connected 1.0" in metrics
    assert 'pifarm_haproxy_servers{backend="model_m",state="ready"}' in metrics


def test_no_ready_node_is_a_clear_503_and_the_sync_keeps_running(farm):
    f = farm
    for n in f.nodes:
        f.kill_node(n.index)
    wait_for(lambda: all(s.admin == "maint" for s in f.servers()["model_m"].values()), "every server in maint", 60)
    r = httpx.post(f.frontend + f"/v2/models/{MODEL}/infer", json={"inputs": []}, timeout=30)
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == f"no ready node serves model {MODEL} behind this HAProxy"
    syncs = f.sync_health()["counters"]["syncs"]
    wait_for(lambda: f.sync_health()["counters"]["syncs"] > syncs + 3, "the sync to keep syncing", 30)
    assert f.sync_health()["connected"] is True

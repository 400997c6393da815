"""The sync against a real HAProxy, fleet state given directly (no nodes: the servers' ports are
closed, so only the Runtime API side is exercised): servers added, weighted, drained, put in
maintenance and deleted; a node id HAProxy would refuse, sanitised; a new model backend reloads;
the socket gone and back."""

from __future__ import annotations

import subprocess

import pytest

from pifarm.appliance.haproxy.plan import plan, safe_name
from pifarm.appliance.haproxy.render import render
from pifarm.appliance.haproxy.settings import HaproxySettings
from pifarm.appliance.haproxy.sync import Sync
from tests.haproxy.harness import HAProxyProc
from tests.support.procs import free_port
from tests.support.wait import wait_for

WEIRD = "pi 07/évil;node"


def node(nid, port, state="ready", models=("m",), throttled=False, ready=True, serving=1):
    return {"node": nid, "state": state, "seconds_since": 0.1,
            "report": {"address": f"http://127.0.0.1:{port}", "throttling": {"status": "throttled" if throttled else "ok"},
                       "models": {m: {"ready": ready, "serving": serving, "active": serving} for m in models}}}


class Fleet:
    def __init__(self, nodes):
        self.nodes, self.rollouts = nodes, {"active": {}}

    def __call__(self):
        return list(self.nodes), self.rollouts


@pytest.fixture
def rig(tmp_path, short_dir, haproxy_bin):
    s = HaproxySettings(socket=str(short_dir / "h.sock"), bind=f"127.0.0.1:{free_port()}", probe_interval=0,
                        interval=0.1, config=str(tmp_path / "haproxy.cfg"))
    fleet = Fleet([node("a", free_port()), node("b", free_port())])
    (tmp_path / "haproxy.cfg").write_text(render(plan(*fleet(), s), s, socket=s.socket))
    proxy = HAProxyProc(tmp_path / "haproxy.cfg", s.socket, tmp_path / "haproxy.log").start()
    sync = Sync(s, fleet, reload_command=f"kill -USR2 {proxy.popen.pid}")
    yield s, fleet, proxy, sync
    proxy.stop()


def test_servers_follow_the_fleet(rig):
    s, fleet, proxy, sync = rig
    sync.tick()
    have = sync.runtime.servers()["model_m"]
    assert {k: (v.admin, v.weight) for k, v in have.items()} == {"a": ("ready", 100), "b": ("ready", 100)}
    # b degraded and throttled (lowest weight wins), c joins, a goes missing, then b not ready
    fleet.nodes = [node("a", have["a"].port, state="missing"), node("b", have["b"].port, state="degraded",
                                                                   throttled=True), node("c", free_port())]
    sync.tick()
    have = sync.runtime.servers()["model_m"]
    assert have["a"].admin == "maint" and have["b"].weight == 50 and have["b"].admin == "ready"
    assert have["c"].admin == "ready" and have["c"].weight == 100
    assert set(sync.runtime.servers()["all_models"]) == {"a", "b", "c"}
    fleet.nodes[1] = node("b", have["b"].port, ready=False)
    sync.tick()
    assert sync.runtime.servers()["model_m"]["b"].admin == "drain"
    # a forgotten: deleted from every backend
    fleet.nodes = fleet.nodes[1:]
    sync.tick()
    assert "a" not in sync.runtime.servers()["model_m"] and "a" not in sync.runtime.servers()["all_models"]
    assert any("del model_m/a" in e for _, e in sync.events)
    assert sync.counters["command_failures"] == 0, sync.status()


def test_a_node_id_haproxy_would_refuse_is_sanitised(rig, tmp_path, haproxy_bin):
    s, fleet, proxy, sync = rig
    fleet.nodes = fleet.nodes + [node(WEIRD, free_port())]
    name = safe_name(WEIRD)
    assert name != WEIRD and all(c.isalnum() or c in "_.:-" for c in name)
    assert safe_name(WEIRD + "x") != name  # ids that sanitise alike stay apart (hash suffix)
    sync.tick()
    assert name in sync.runtime.servers()["model_m"], sync.status()
    # and a rendered config with it is valid for HAProxy itself
    cfg = tmp_path / "weird.cfg"
    cfg.write_text(render(plan(*fleet(), s), s, socket=str(tmp_path / "x.sock")))
    r = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_model_backend_is_the_one_change_that_reloads(rig):
    s, fleet, proxy, sync = rig
    sync.tick()
    assert sync.counters["reloads"] == 0
    fleet.nodes = fleet.nodes + [node("d", free_port(), models=("m", "newmodel"))]
    sync.tick()
    assert sync.counters["reloads"] == 1, sync.status()
    assert "backend model_newmodel" in open(s.config).read()

    def applied():
        sync.tick()
        return "d" in sync.runtime.servers().get("model_newmodel", {})
    wait_for(applied, "the reloaded HAProxy to have model_newmodel/d", 30, interval=0.2)
    # one reload (a second only if the first brought nothing within RELOAD_GRACE on a busy box)
    reloads = sync.counters["reloads"]
    assert reloads in (1, 2), proxy.output(full=True)
    fleet.nodes[0] = node("a", free_port(), state="degraded")  # node changes never reload
    sync.tick()
    assert sync.counters["reloads"] == reloads and sync.counters["reload_failures"] == 0


def test_socket_gone_and_back(rig, tmp_path):
    s, fleet, proxy, sync = rig
    sync.tick()
    assert sync.status()["status"] == "ok"
    proxy.stop()
    sync.tick()
    st = sync.status()
    assert st["status"] == "degraded" and st["connected"] is False and "not there" in st["socket_error"]
    sync.tick()  # keeps running, keeps trying
    fleet.nodes = fleet.nodes + [node("e", free_port())]
    proxy.start()  # from the config file the sync kept current (e included)
    sync.tick()
    st = sync.status()
    assert st["connected"] is True and st["counters"]["reconnects"] == 1
    assert any("reconnected" in e for _, e in sync.events)
    assert "e" in sync.runtime.servers()["model_m"]


def test_standalone_sync_health_and_metrics(rig):
    import httpx

    from pifarm.appliance.haproxy.status_http import serve_status

    s, fleet, proxy, sync = rig
    server = serve_status("127.0.0.1:0", sync)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        sync.tick()
        h = httpx.get(url + "/health", timeout=10)
        assert h.status_code == 200 and h.json()["connected"] is True
        m = httpx.get(url + "/metrics", timeout=10).text
        assert "pifarm_haproxy_connected 1.0" in m and 'pifarm_haproxy_servers{backend="model_m",state="ready"} 2.0' in m
        proxy.stop()
        sync.tick()
        h = httpx.get(url + "/health", timeout=10)
        assert h.status_code == 503 and h.json()["connected"] is False
        assert "pifarm_haproxy_connected 0.0" in httpx.get(url + "/metrics", timeout=10).text
        assert httpx.get(url + "/nope", timeout=10).status_code == 404
    finally:
        server.shutdown()

"""H1, H2 (issue 15): HAProxy in front of three real nodes, driven by the aggregator's sync.

H1: inference requests per second through HAProxy to 3 nodes / the same clients (three load
    processes, bench/_loadclient.py, raw HTTP/1.1 keep-alive) straight to the nodes, same run,
    alternated twice, with the sample linear model (16 floats in, 4 out: no compute at all, so
    it measures HAProxy's hop against an HTTP round trip alone, the worst case). Goal >= 0.9.
    The detail also gives the ratio with a real model (MediaPipe face_landmark, ~1.2 ms per
    invoke, a 432 KiB binary tensor per request, as a Pi client sends images).
H2: failover gap: from SIGKILL of a node to HAProxy no longer choosing it (server in maint or
    drain, or marked down), polled every 10 ms on each HAProxy's Runtime API. Two HAProxys from
    the same rendered config watch the same kill: one driven by the aggregator's sync (defaults:
    interval 0.5 s, probe_interval 0.25 s), one with its health checks alone (defaults: inter 2 s,
    fall 2). Median of 3 kills. Ratio = sync / checks; goal: sync under 1 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pifarm.appliance.haproxy.runtime import Runtime
from tests.fleet import models
from tests.fleet.farm import MODEL, wait_reported
from tests.haproxy.harness import BODY, HaFarm, HAProxyProc
from tests.support.procs import free_port
from tests.support.wait import wait_for

LOAD = Path(__file__).with_name("_loadclient.py")
SECONDS, CONC = 6.0, 4


def _load(urls: list[str], body: Path, header_len: int = 0) -> dict:
    procs = [subprocess.Popen([sys.executable, str(LOAD), u, f"/v2/models/{MODEL}/infer", str(body), str(header_len),
                               str(CONC),
                               str(SECONDS)], stdout=subprocess.PIPE, text=True) for u in urls]
    outs = [json.loads(p.communicate(timeout=SECONDS + 120)[0]) for p in procs]
    return {"rps": sum(o["n"] / o["seconds"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "n": sum(o["n"] for o in outs)}


def _gone(rt: Runtime, name: str) -> bool:
    s = rt.servers().get(f"model_{MODEL}", {}).get(name)
    return s is None or s.admin != "ready" or not s.up


def run(workdir: Path) -> dict:
    farm = HaFarm(workdir / "farm", nodes_wanted=3, sync_settings="").start()
    checks_only: HAProxyProc | None = None
    try:
        v1 = farm.publish(models.good(farm.root / "v1.tflite", seed=1), channel="stable")
        farm.wait_serving(v1)
        wait_reported(farm, v1)
        farm.render()
        farm.start_haproxy()
        sock2 = str(farm.short / "checks.sock")
        farm.render(out=farm.root / "checks.cfg", socket=sock2, port=free_port())
        checks_only = HAProxyProc(farm.root / "checks.cfg", sock2, farm.root / "checks.log").start()
        synced, alone = farm.runtime(), Runtime(sock2)

        def all_up():
            return all(len([s for s in rt.servers().get(f"model_{MODEL}", {}).values()
                            if s.admin == "ready" and s.up]) == 3 for rt in (synced, alone))
        wait_for(all_up, "both HAProxys with 3 servers up", 120, interval=0.2)

        # H1
        body = workdir / "body.json"
        body.write_text(json.dumps(BODY))
        via, direct = [], []
        for _ in range(2):
            via.append(_load([farm.frontend] * 3, body))
            direct.append(_load([n.url for n in farm.nodes], body))
        tiny_via = statistics.mean(x["rps"] for x in via)
        tiny_direct = statistics.mean(x["rps"] for x in direct)

        # H2
        gaps_sync, gaps_checks = [], []
        for i in range(3):
            name = farm.server_name(i)
            t0 = time.monotonic()
            farm.kill_node(i)
            seen: dict[str, float] = {}
            while len(seen) < 2 and time.monotonic() - t0 < 60:
                for key, rt in (("sync", synced), ("checks", alone)):
                    if key not in seen and _gone(rt, name):
                        seen[key] = time.monotonic() - t0
                time.sleep(0.01)
            gaps_sync.append(seen.get("sync", 60.0))
            gaps_checks.append(seen.get("checks", 60.0))
            farm.start_node(i)
            wait_for(all_up, "the node back in both HAProxys", 120, interval=0.2)
        sync_gap, checks_gap = statistics.median(gaps_sync), statistics.median(gaps_checks)

        # H1 with a real model
        from bench.b_inference import binary_body, first_input
        from tests.support.models import fetch as fetch_models, model_path

        fetch_models()
        blob = model_path("face_landmark").read_bytes()
        (farm.root / "face.tflite").write_bytes(blob)
        v2 = farm.publish(farm.root / "face.tflite", channel="stable")
        farm.wait_serving(v2)
        wait_reported(farm, v2)
        wait_for(all_up, "both HAProxys with 3 servers up on the real model", 120, interval=0.2)
        name, x = first_input(blob)
        data, hl = binary_body(name, x)
        real = workdir / "real.bin"
        real.write_bytes(data)
        for _ in range(2):
            via.append(_load([farm.frontend] * 3, real, hl))
            direct.append(_load([n.url for n in farm.nodes], real, hl))
        rps_via = statistics.mean(x["rps"] for x in via[2:])
        rps_direct = statistics.mean(x["rps"] for x in direct[2:])
    finally:
        if checks_only is not None:
            checks_only.stop()
        farm.stop()
    return {
        "H1": {"what": "inference req/s through HAProxy to 3 nodes / same clients straight to the nodes "
                       "(sample model: the hop's cost alone)",
               "ratio": tiny_via / tiny_direct, "goal": ">=0.9",
               "detail": {"via_rps": round(tiny_via, 1), "direct_rps": round(tiny_direct, 1),
                          "real_model": "face_landmark", "real_model_ratio": round(rps_via / rps_direct, 3),
                          "real_via_rps": round(rps_via, 1), "real_direct_rps": round(rps_direct, 1),
                          "errors": sum(x["errors"] for x in via + direct), "clients": f"3 procs x {CONC} conns",
                          "seconds": SECONDS}},
        "H2": {"what": "failover gap after SIGKILL: aggregator's sync / HAProxy health checks alone",
               "ratio": sync_gap / checks_gap, "goal": "sync < 1 s",
               "detail": {"sync_s": round(sync_gap, 3), "checks_s": round(checks_gap, 3),
                          "sync_runs": [round(x, 3) for x in gaps_sync],
                          "checks_runs": [round(x, 3) for x in gaps_checks],
                          "settings": "sync interval 0.5 s, probe 0.25 s; checks inter 2 s fall 2"}},
    }

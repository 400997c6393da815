"""S2: does serving pieces to peers starve inference? (issue 16)

One real `pifarm node run` serving the sample model over HTTP (KServe V2) while its piece server
sends a 64 MiB blob it holds to 6 peer connections in a loop (loopback, a fake peer with a real
swarm token from the tracker). Inference latency is measured idle and while serving, with the
piece server unlimited and with `upload_rate` = 12.5 MB/s (a 100 Mbit/s share);
S2.ratio = p99 while serving (limited) / p99 idle, the detail has p50/p99 of every phase.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pifarm.appliance.demo import samplemodel as sm
from pifarm.initiator.identity import ensure_identity
from pifarm.registry.fleet_api import load_token_key, node_token
from tests.support.aggregator import start_aggregator
from tests.support.procs import free_port, start_pifarm
from tests.support.wait import wait_for

MiB = 1 << 20
WINDOW = 12.0


def _latencies(url: str, seconds: float) -> list[float]:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    out = []
    end = time.monotonic() + seconds
    with httpx.Client(timeout=10) as c:
        while time.monotonic() < end:
            t = time.perf_counter()
            r = c.post(f"{url}/v2/models/m/infer", json=body)
            if r.status_code == 200:
                out.append(time.perf_counter() - t)
            time.sleep(0.005)
    return out


PULL = """
import http.client, sys, time
port, hexd, pieces, psize, token, seconds = sys.argv[1:7]
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=20)
end, got, i = time.monotonic() + float(seconds), 0, 0
while time.monotonic() < end:
    c.request("GET", f"/v1/pieces/{hexd}/{i % int(pieces)}?size={psize}", headers={"Authorization": f"Bearer {token}"})
    got += len(c.getresponse().read())
    i += 1
print(got)
"""


def _phase(url, port, blob, token, pulling: bool) -> dict:
    """Inference latencies for WINDOW s; with `pulling`, 6 peer processes (not threads of this
    one: the GIL would pace them) fetch pieces meanwhile."""
    procs = []
    if pulling:
        hexd, pieces, psize = blob
        procs = [subprocess.Popen([sys.executable, "-c", PULL, str(port), hexd, str(pieces), str(psize), token,
                                   str(WINDOW)], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    t0 = time.monotonic()
    lat = _latencies(url, WINDOW)
    sent = sum(int(p.communicate(timeout=60)[0] or 0) for p in procs)
    q = statistics.quantiles(lat, n=100)
    return {"p50_ms": round(q[49] * 1e3, 2), "p99_ms": round(q[98] * 1e3, 2), "requests": len(lat),
            "served_MBps": round(sent / (time.monotonic() - t0) / 1e6, 1)}


def run(workdir: Path) -> dict[str, dict]:
    agg = start_aggregator(workdir / "agg")
    key = load_token_key(agg.data_dir)
    out: dict[str, dict] = {}
    try:
        with agg.client() as c:
            c.publish(sm.write_sample(workdir / "m.tflite", "linear", seed=1), "m", "stable")
            big = workdir / "big.bin"
            big.write_bytes(os.urandom(64 * MiB))
            doc = c.publish(big, "big", "stable", format="raw")["document"]["signed"]
        f = doc["files"][0]
        blob = (f["digest"].split(":")[1], len(f["pieces"]["digests"]), f["pieces"]["size"])
        tok = httpx.get(agg.url + "/v1/peers", params={"blob": f["digest"], "port": 1},
                        headers={"Authorization": f"Bearer {node_token(key, 'bench-peer')}",
                                 "X-Pifarm-Node": "bench-peer"}, timeout=10).json()["token"]
        for label, rate in (("unlimited", 0), ("limited", 12.5e6)):
            root = workdir / f"node-{label}"
            ident = ensure_identity(root / "identity")
            port, pport = free_port(), free_port()
            (root / "node.toml").write_text(
                f'[node]\ntrusted_keys = ["{agg.pubkey}"]\nhost_identity = "{root / "identity"}"\n'
                f'report_token = "{node_token(key, ident.hostid)}"\n[cache]\nscrub_interval = 0.0\n'
                f'[inference]\ngrpc_listen = "off"\n[inference.models.m]\nnum_threads = 1\n'
                f'[[sources]]\nkind = "peers"\noptions = {{listen = "127.0.0.1:{pport}", upload_rate = {rate}}}\n'
                f'[[sources]]\nkind = "http"\n')
            url = f"http://127.0.0.1:{port}"
            node = start_pifarm(["node", "run", "--aggregator", agg.url, "--config", str(root / "node.toml"),
                                 "--cache", str(root / "cache"), "--state-dir", str(root / "state"),
                                 "--listen", f"127.0.0.1:{port}"], root / "node.log", f"{url}/v2/health/live",
                                timeout=90)
            try:
                wait_for(lambda: (root / "cache" / "blobs" / "blake3" / blob[0]).exists() and
                         httpx.get(f"{url}/v2/models/m/ready", timeout=2).status_code == 200, "node ready", 180, 0.2)
                wait_for(lambda: httpx.get(f"http://127.0.0.1:{pport}/v1/pieces/{blob[0]}",
                                           headers={"Authorization": f"Bearer {tok}"}).status_code == 200,
                         "node seeding the big blob", 120, 0.5)
                idle = _phase(url, pport, blob, tok, False)
                busy = _phase(url, pport, blob, tok, True)
            finally:
                node.stop()
            out[label] = {"idle": idle, "serving": busy}
    finally:
        agg.stop()
    ratio = out["limited"]["serving"]["p99_ms"] / out["limited"]["idle"]["p99_ms"]
    detail = {f"{k}_{ph}_{m}": v for k, d in out.items() for ph, r in d.items() for m, v in r.items()}
    return {"S2": {"what": "inference p99 while serving pieces (upload_rate 12.5 MB/s) / idle p99",
                   "ratio": round(ratio, 3), "goal": "<=1.5", "detail": detail}}

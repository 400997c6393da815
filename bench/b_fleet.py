"""Issue 13 benchmarks: rollouts against channel following, and the aggregator's cost of reports.

F1  publish -> version active on every node of a 4-node loopback fleet, through a rollout with
    waves `100%` and bake 0, against the same fleet following the channel (publish --channel
    stable) without a rollout. Ratio = rollout time / channel time (median of rounds); goal <= 1.2.
F2  1,000 simulated nodes reporting every 10 s (100 reports/s, realistic reports with per-version
    histograms, each node with its own token) to a real `pifarm aggregator run`: the aggregator
    process's CPU share of one core over the window (from /proc/<pid>/stat); goal <= 0.05.
    The idle aggregator's share over the same length is given in the detail.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import httpx

F1_ROUNDS = int(os.environ.get("PIFARM_BENCH_F1_ROUNDS", "3"))
# the nodes' metadata token buckets (1/s, burst 5) full again before each timed publish, as on a
# farm where publishes are minutes apart: a rollout is 3 revisions (publish, start, promote)
REFILL = 6.0
F2_NODES = int(os.environ.get("PIFARM_BENCH_F2_NODES", "1000"))
F2_INTERVAL = 10.0
F2_WINDOW = float(os.environ.get("PIFARM_BENCH_F2_WINDOW", "30"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_serving(farm, version: int) -> bool:
    return set(farm.serving().values()) == {version}


def _time_until(cond, timeout: float = 180.0, interval: float = 0.02) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        time.sleep(interval)
    return time.monotonic() - t0


def bench_f1(workdir: Path) -> dict:
    from tests.fleet import models
    from tests.fleet.farm import Farm, wait_reported

    farm = Farm(workdir / "f1", nodes_wanted=4, report_interval=1.0).start()
    try:
        v = farm.publish(models.good(workdir / "v0.tflite", seed=100), channel="stable")
        farm.wait_serving(v)
        wait_reported(farm, v)
        channel, rollout, published, started = [], [], [], []
        for i in range(F1_ROUNDS):
            path = models.good(workdir / f"c{i}.tflite", seed=200 + i)
            time.sleep(REFILL)
            t0 = time.monotonic()
            v = farm.publish(path, channel="stable")
            _time_until(lambda: _all_serving(farm, v))
            channel.append(time.monotonic() - t0)
            wait_reported(farm, v)
            path = models.good(workdir / f"r{i}.tflite", seed=300 + i)
            time.sleep(REFILL)
            t0 = time.monotonic()
            v = farm.publish(path)
            published.append(time.monotonic() - t0)
            farm.rollout(v, waves="100%", bake=0, min_requests=0, max_latency_ratio=100)
            started.append(time.monotonic() - t0)
            _time_until(lambda: _all_serving(farm, v))
            rollout.append(time.monotonic() - t0)
            farm.wait_rollout("promoted")
            wait_reported(farm, v)
    finally:
        farm.stop()
    c, r = statistics.median(channel), statistics.median(rollout)
    return {"F1": {"what": "publish -> active on 4 nodes: rollout (waves 100%, bake 0) / channel", "ratio": r / c,
                   "goal": "<=1.2", "detail": {"channel_s": round(c, 3), "rollout_s": round(r, 3),
                                               "rounds": F1_ROUNDS,
                                               "rollout_published_s": round(statistics.median(published), 3),
                                               "rollout_started_s": round(statistics.median(started), 3)}}}


def _report(node: str, seq: int) -> bytes:
    from pifarm.fleetwire.report import ModelReport, Report, VersionStats

    b = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
    stats = {v: VersionStats(1000 * seq, seq % 3, 0.4 * seq, tuple((x, min(1000 * seq, int(800 * seq * (i + 1) / 4)))
                                                                    for i, x in enumerate(b)))
             for v in ("7", "8")}
    rep = Report(node=node, hostname=f"pi-{node[-4:]}", pifarm="0.1.0", address="http://10.0.0.1:8080",
                 interval=F2_INTERVAL, seq=seq, state="ready", channel="stable", revision=42,
                 cache={"used": 123456789, "budget": 8 << 30}, paths={"http": "live", "s3": "disabled"},
                 throttling={"status": "ok", "bits": 0, "flags": [], "reason": None},
                 temperature={"celsius": 51.2, "zone": "cpu-thermal", "reason": None},
                 models={"detector": ModelReport(active=8, previous=7, ready=True, serving=8, source="nvme",
                                                 stats=stats)})
    return rep.encode()


async def _simulate(url: str, tokens: dict[str, str], window: float) -> tuple[int, int]:
    """Every node reports every F2_INTERVAL s, spread evenly; (sent, refused)."""
    nodes = list(tokens)
    gap = F2_INTERVAL / len(nodes)
    sent = refused = 0
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as c:
        async def one(node: str, seq: int) -> None:
            nonlocal sent, refused
            async with sem:
                r = await c.post(url, content=_report(node, seq),
                                 headers={"Authorization": f"Bearer {tokens[node]}",
                                          "Content-Type": "application/json"})
            sent += 1
            refused += r.status_code != 200

        t0 = time.monotonic()
        tasks, i = [], 0
        while (now := time.monotonic() - t0) < window:
            due = int(now / gap)
            while i <= due:
                tasks.append(asyncio.create_task(one(nodes[i % len(nodes)], 1 + i // len(nodes))))
                i += 1
            await asyncio.sleep(gap)
        await asyncio.gather(*tasks)
    return sent, refused


def bench_f2(workdir: Path) -> dict:
    from pifarm.registry.fleet_api import load_token_key, node_token
    from tests.support.aggregator import start_aggregator

    agg = start_aggregator(workdir / "f2agg")
    try:
        key = load_token_key(agg.data_dir)
        tokens = {f"sim-{i:05d}": node_token(key, f"sim-{i:05d}") for i in range(F2_NODES)}
        # one round so every node exists (first reports log a line each), then the measured window
        asyncio.run(_simulate(agg.url + "/v1/fleet/report", tokens, F2_INTERVAL))
        idle0, t0 = _cpu_seconds(agg.pid), time.monotonic()
        time.sleep(min(F2_WINDOW, 10.0))
        idle = (_cpu_seconds(agg.pid) - idle0) / (time.monotonic() - t0)
        c0, t0 = _cpu_seconds(agg.pid), time.monotonic()
        sent, refused = asyncio.run(_simulate(agg.url + "/v1/fleet/report", tokens, F2_WINDOW))
        share = (_cpu_seconds(agg.pid) - c0) / (time.monotonic() - t0)
        nodes = len(httpx.get(agg.url + "/v1/fleet", timeout=30).json()["nodes"])
    finally:
        agg.stop()
    return {"F2": {"what": f"aggregator CPU share of one core, {F2_NODES} nodes reporting every {F2_INTERVAL:g} s",
                   "ratio": share, "goal": "<=0.05",
                   "detail": {"reports": sent, "refused": refused, "reports_per_s": round(sent / F2_WINDOW, 1),
                              "idle_share": round(idle, 4), "nodes_known": nodes, "window_s": F2_WINDOW}}}


def run(workdir: Path) -> dict:
    out = bench_f2(workdir)
    out.update(bench_f1(workdir))
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d)), indent=2))

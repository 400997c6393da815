"""Several aggregators on one S3 bucket (issue 17), real SeaweedFS, real aggregator processes.

A1: publishes per second with two aggregators racing on one bucket / one aggregator alone on
    the same kind of bucket (same client load, same run); goal: no lost publish and >= 0.5.
A2: from a publish acknowledged by aggregator 1 to a long-poll parked on aggregator 2 being
    answered with that revision: p99 over the samples / the 2 s goal (<= 1). Baseline in the
    detail: the same with the watcher parked on aggregator 1 itself.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pifarm.client.http import AggregatorClient  # noqa: E402
from tests.support.multiagg import TOKEN, SharedFarm  # noqa: E402
from tests.support.seaweed import start_seaweed  # noqa: E402

PUBLISHES = int(os.environ.get("PIFARM_BENCH_A1_PUBLISHES", "80"))
WORKERS = 8
SAMPLES = int(os.environ.get("PIFARM_BENCH_A2_SAMPLES", "30"))


def _bucket(seaweed, name: str) -> str:
    c = seaweed.client()
    c.create_bucket(Bucket=name)
    c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _publishes(farm: SharedFarm, workdir: Path, tag: str) -> tuple[float, int, int]:
    """(publishes/s, acknowledged, acknowledged ones missing from the converged snapshot)."""
    src = workdir / f"payload-{tag}"
    src.mkdir()
    paths = []
    for i in range(PUBLISHES):
        p = src / f"{i}.bin"
        p.write_bytes(os.urandom(512))
        paths.append(p)
    acks, lock = [], threading.Lock()
    it = iter(enumerate(paths))

    def worker() -> None:
        clients = [AggregatorClient(a.url, TOKEN, timeout=120) for a in farm.aggs]
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                break
            i, p = job
            out = clients[i % len(clients)].publish(p, "bench", format="raw")
            with lock:
                acks.append((out["version"], out["manifest_digest"]))
        for c in clients:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    snap = farm.converged()
    served = {(v["version"], v["manifest_digest"]) for v in snap["signed"]["models"]["bench"]["versions"]}
    return len(acks) / elapsed, len(acks), len([a for a in acks if a not in served])


def _notify_latency(farm: SharedFarm, publish_on: int, watch_on: int, workdir: Path, n: int) -> list[float]:
    out = []
    with AggregatorClient(farm.aggs[publish_on].url, TOKEN) as pub, httpx.Client(timeout=60) as http:
        for i in range(n):
            since = farm.snapshot(watch_on)["signed"]["revision"]
            answered: dict = {}

            def park() -> None:
                r = http.get(farm.aggs[watch_on].url + "/v1/metadata", params={"since": since, "wait": 30})
                answered["t"] = time.perf_counter()
                answered["rev"] = r.json()["signed"]["revision"] if r.status_code == 200 else None

            t = threading.Thread(target=park)
            t.start()
            time.sleep(0.2)  # parked before the publish
            p = workdir / f"a2-{publish_on}-{watch_on}-{i}.bin"
            p.write_bytes(os.urandom(256))
            pub.publish(p, "a2", format="raw")
            acked = time.perf_counter()
            t.join(60)
            if answered.get("rev") is not None:
                out.append(max(0.0, answered["t"] - acked))
            else:
                out.append(30.0)  # not answered within the wait: counted as a miss, not dropped
    return out


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def run(workdir: Path) -> dict:
    seaweed = start_seaweed(workdir / "seaweed")
    farms = []
    try:
        def farm(name: str, n: int) -> SharedFarm:
            root = workdir / name
            root.mkdir()
            f = SharedFarm(root, seaweed.endpoint, f"s3://{_bucket(seaweed, name)}/farm", seaweed.access_key,
                           seaweed.secret_key, n=n)
            farms.append(f)
            return f

        one = farm("bench-one", 1)
        rate_one, acked_one, lost_one = _publishes(one, workdir, "one")
        one.stop()
        two = farm("bench-two", 2)
        rate_two, acked_two, lost_two = _publishes(two, workdir, "two")
        cross = _notify_latency(two, 0, 1, workdir, SAMPLES)
        same = _notify_latency(two, 0, 0, workdir, max(5, SAMPLES // 3))
        two.stop()
    finally:
        for f in farms:
            f.stop()
        seaweed.stop()
    return {
        "A1": {"what": "publishes/s: two aggregators racing on one bucket / one alone", "ratio": rate_two / rate_one,
               "goal": ">=0.5, lost=0",
               "detail": {"one_per_s": round(rate_one, 2), "two_per_s": round(rate_two, 2), "publishes": PUBLISHES,
                          "workers": WORKERS, "lost": lost_one + lost_two, "acked": acked_one + acked_two}},
        "A2": {"what": "p99 publish on aggregator 1 -> long-poll on aggregator 2 answered / 2 s goal",
               "ratio": _p99(cross) / 2.0, "goal": "<=1",
               "detail": {"p99_s": round(_p99(cross), 3), "p50_s": round(statistics.median(cross), 3),
                          "samples": len(cross), "same_aggregator_p99_s": round(_p99(same), 3)}},
    }

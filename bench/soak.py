"""Soak R7 (issue 15): `make soak` (SOAK_SECONDS, default 600) -> bench/soak.json.

An aggregator running the HAProxy sync with 1,000 parked watchers (long-polls of
`/v1/metadata?since=N&wait=30`, re-parked as soon as they are answered), three `pifarm node run`
behind HAProxy under steady inference load (3 clients, ~150 requests/s), a publish with a rollout
every 30 s (waves 1,100%, promoted by its gates), one node restarted (SIGTERM, start) every 2
minutes, in turn. Shorter runs scale the two periods down (a quarter and a half of the run).

At the end: failed requests (goal 0), every node on the last promoted version, and the resident
memory of every pifarm process from the end of its warm-up (a fifth of the run, at least 10 s
after it started) to its last sample (goal < 5 % over the run).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
WATCHERS = 1000


def _rss_kib(pid: int) -> int:
    """VmRSS of a process and its children (KiB); 0 once it is gone."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _rss_kib(int(child))
    except (OSError, ValueError):
        return 0
    return total


class Watchers:
    """WATCHERS long-polls parked on the aggregator from one asyncio loop in a thread."""

    def __init__(self, host: str, port: int, n: int = WATCHERS):
        self.host, self.port, self.n = host, port, n
        self.answers = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="watchers")

    async def _one(self, since: int) -> None:
        while not self._stop.is_set():
            try:
                r, w = await asyncio.open_connection(self.host, self.port)
                try:
                    while not self._stop.is_set():
                        w.write(f"GET /v1/metadata?since={since}&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                        status = await r.readline()
                        length = 0
                        while (line := await r.readline()) not in (b"\r\n", b""):
                            k, _, v = line.decode().partition(":")
                            if k.lower() == "content-length":
                                length = int(v)
                            if k.lower() == "x-pifarm-revision" and v.strip().lstrip("-").isdigit():
                                since = int(v)
                        await r.readexactly(length)
                        if not status:
                            break
                        self.answers += 1
                finally:
                    w.close()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.errors += 1
                await asyncio.sleep(1)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._one(0)) for _ in range(self.n)]
        while not self._stop.is_set():
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> "Watchers":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run(seconds: float, workdir: Path, log=print) -> dict:
    from tests.fleet import models
    from tests.fleet.farm import MODEL, wait_reported
    from tests.haproxy.harness import HaFarm, Load
    from tests.support.wait import wait_for

    publish_every, restart_every = min(30.0, seconds / 4), min(120.0, seconds / 2)
    warmup = seconds / 5
    farm = HaFarm(workdir / "farm", nodes_wanted=3).start()
    samples: dict[str, list[tuple[float, int]]] = {}
    born: dict[str, float] = {}
    out: dict = {}
    watchers = None
    try:
        stable = farm.publish(models.good(farm.root / "v1.tflite", seed=1), channel="stable")
        farm.wait_serving(stable)
        wait_reported(farm, stable)
        farm.render()
        farm.start_haproxy()
        wait_for(lambda: len([s for s in farm.servers().get(f"model_{MODEL}", {}).values() if s.admin == "ready"]) == 3,
                 "3 ready servers", 60)
        watchers = Watchers("127.0.0.1", farm.agg.port).start()

        def procs() -> dict[str, int]:
            p = {"aggregator": farm.agg.pid}
            for n in farm.nodes:
                if n.proc is not None:
                    p[f"node{n.index}:{n.proc.popen.pid}"] = n.proc.popen.pid
            return p

        t0 = time.monotonic()
        next_pub, next_restart, k, restarted = t0 + publish_every, t0 + restart_every, 2, 0
        promoted, rollouts = [stable], 0
        with Load(farm.frontend, clients=3, interval=0.02, max_requests=int(seconds * 400) + 10_000) as load:
            while (now := time.monotonic()) - t0 < seconds:
                for name, pid in procs().items():
                    born.setdefault(name, now)
                    samples.setdefault(name, []).append((now - t0, _rss_kib(pid)))
                if now >= next_pub:
                    next_pub += publish_every
                    st = farm.status() if rollouts else {}
                    if st.get("state") in ("running", "paused"):
                        log(f"soak: rollout of v{st['version']} still {st['state']}; publish skipped")
                    else:
                        if st.get("state") == "promoted":
                            promoted.append(st["version"])
                        v = farm.publish(models.good(farm.root / f"v{k}.tflite", seed=k))
                        k += 1
                        farm.rollout(v, waves="1,100%", bake=2, min_requests=10, max_latency_ratio=50,
                                     max_error_rate=0.05, activate_timeout=120)
                        rollouts += 1
                        log(f"soak: {now - t0:.0f}s published v{v} with a rollout ({load.count()} answers so far)")
                if now >= next_restart:
                    next_restart += restart_every
                    i = restarted % len(farm.nodes)
                    restarted += 1
                    farm.nodes[i].proc.stop()
                    farm.nodes[i].proc = None
                    farm.start_node(i)
                    log(f"soak: {time.monotonic() - t0:.0f}s restarted node {i}")
                time.sleep(min(2.0, max(0.05, min(next_pub, next_restart, t0 + seconds) - time.monotonic())))
            # the last rollout settles (promoted) before the load stops
            final = wait_for(lambda: (s := farm.status()).get("state") in ("promoted", "aborted") and s, "last rollout",
                             180)
        if final["state"] == "promoted":
            promoted.append(final["version"])
        farm.wait_serving(promoted[-1], timeout=120)
        failed = load.failed()
        growth = {}
        for name, rows in samples.items():
            rows = [(t, r) for t, r in rows if r > 0]
            start = born[name] - t0 + max(warmup, 10.0)
            after = [r for t, r in rows if t >= start]
            if len(after) >= 3:
                base = after[0]
                end = statistics.mean(after[-3:])
                growth[name] = {"rss_mib_after_warmup": round(base / 1024, 1), "rss_mib_end": round(end / 1024, 1),
                                "growth": round(end / base - 1, 4), "samples": len(after)}
        out = {"seconds": seconds, "requests": len(load.results), "failed": len(failed),
               "failed_examples": [f.error for f in failed[:5]], "rollouts_started": rollouts,
               "promoted": promoted, "node_restarts": restarted, "watchers": WATCHERS,
               "watcher_answers": watchers.answers, "watcher_errors": watchers.errors,
               "serving": farm.serving(), "memory": growth,
               "max_growth": max((g["growth"] for g in growth.values()), default=None),
               "aggregator_growth": (growth.get("aggregator") or {}).get("growth"),
               "sync": {k: v for k, v in farm.sync_health().get("counters", {}).items()}}
    finally:
        if watchers is not None:
            watchers.stop()
        farm.stop()
    return out


def main() -> int:
    import tempfile

    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory(prefix="pifarm-soak-") as d:
        res = run(seconds, Path(d))
    (HERE / "soak.json").write_text(json.dumps(res, indent=2, sort_keys=True))
    print(json.dumps({k: res[k] for k in ("seconds", "requests", "failed", "rollouts_started", "node_restarts",
                                          "max_growth", "aggregator_growth")}, indent=2))
    ok = res["failed"] == 0 and len(set(res["serving"].values())) == 1 and (res["max_growth"] or 0) < 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

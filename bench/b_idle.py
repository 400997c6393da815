"""What the daemons cost at rest (issue 19): I1 (CPU share of one core) and I2 (RSS growth).

I1: an aggregator with 10 parked long-poll watchers, a userspace NVMe/TCP target exporting the
    volumes, and a node serving one real model, all idle; each daemon's CPU time over 60 s after a
    20 s settle, as a share of one core (from /proc/<pid>/stat). `ratio` = the node's share in
    percent; the other daemons and every RSS are in `detail`.
I2: resident memory of a node serving three real models after N minutes / after a 60 s settle,
    idle and then under a steady bounded inference load. `make bench` runs a shortened form
    (PIFARM_BENCH_I2_MINUTES, default 2); the issue's figure is 10 minutes.

Real models are the MediaPipe .tflite files `make models` keeps (tests/support/models.py);
without them the bench falls back to generated sample models and says so in `detail`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
REAL = ("face_landmark", "hand_landmark_full", "pose_landmark_full")


# -- /proc sampling -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def shares(pids: dict[str, int], settle: float, window: float) -> dict[str, dict]:
    """CPU share of one core (percent) of each process over `window` s after `settle` s."""
    time.sleep(settle)
    t0, c0 = time.monotonic(), {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(window)
    dt = time.monotonic() - t0
    return {k: {"cpu_pct": round(100 * (cpu_seconds(p) - c0[k]) / dt, 3), "rss_mb": round(rss_mb(p), 1)}
            for k, p in pids.items()}


# -- the farm -------------------------------------------------------------------------------------
def model_files(work: Path, count: int) -> tuple[dict[str, Path], str]:
    """`count` real models (name -> file) and where they came from; sample models without them."""
    try:
        from tests.support.models import model_path  # `make models` (run by `make bench`) fetches them
    except ImportError:
        model_path = None
    if model_path is not None and all(model_path(n).is_file() for n in REAL[:count]):
        return {n: model_path(n) for n in REAL[:count]}, "mediapipe"
    from pifarm.appliance.demo.samplemodel import large_model

    out = {}
    for i in range(count):
        p = work / f"sample{i}.tflite"
        p.write_bytes(large_model(i, megabytes=2.0))
        out[f"sample{i}"] = p
    return out, "generated sample models (real models not found)"


class Farm:
    """Aggregator (+ optional userspace target) and one `pifarm node run`, as real processes."""

    def __init__(self, work: Path, models: dict[str, Path], target: bool = False):
        self.work, self.models = work, models
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.log_of: dict[int, Path] = {}
        self.agg = None
        try:
            self._start(target)
        except BaseException:
            self.close()  # nothing started here may outlive a failed start
            raise

    def _start(self, target: bool) -> None:
        from tests.support.aggregator import free_port, start_aggregator

        work, models = self.work, self.models
        agg_cfg = work / "aggregator.toml"
        agg_cfg.write_text(f'[registry]\ndata_dir = "{work / "agg"}"\n[target]\nenabled = false\n')
        self.agg = start_aggregator(work / "agg", config=agg_cfg)
        with self.agg.client() as rc:
            for name, path in models.items():
                rc.publish(path, name, "stable")
        self.target_pid: int | None = None
        if target:
            for name in models:
                self._cli("volume", "build", name, "1", "--config", str(agg_cfg))
            port = free_port()
            nqn = f"nqn.2014-08.org.nvmexpress:uuid:{uuid.uuid4()}"
            p = self._spawn("target", "target", "serve-userspace", "--data-dir", str(work / "agg" / "volumes"),
                            "--listen", f"127.0.0.1:{port}", "--allow-host", nqn)
            self._wait(lambda: _connects(port), p, "userspace target")
            self.target_pid = p.pid
        self.port = free_port()
        node_cfg = work / "node.toml"
        node_cfg.write_text(f'[node]\ntrusted_keys = ["{self.agg.pubkey}"]\n'
                            f'[inference]\ngrpc_listen = "127.0.0.1:{free_port()}"\n')
        self.node = self._spawn("node", "-v", "node", "run", "--aggregator", self.agg.url, "--config", str(node_cfg),
                                "--cache", str(work / "cache"), "--state-dir", str(work / "state"),
                                "--listen", f"127.0.0.1:{self.port}")
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait(self._serving, self.node, "node serving every model", timeout=180)

    def _cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "pifarm", *args], cwd=REPO, check=True, capture_output=True)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")
        self.logs.append(log)
        p = subprocess.Popen([sys.executable, "-m", "pifarm", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        self.log_of[p.pid] = self.work / f"{name}.log"
        return p

    def _serving(self) -> bool:
        try:
            h = httpx.get(self.url + "/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return all(h.get("models", {}).get(n, {}).get("ready") for n in self.models)

    def _wait(self, cond, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_of[proc.pid].read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what}: not ready ({proc.returncode}): {tail}")
            time.sleep(0.1)

    def close(self) -> None:
        from tests.support.procs import stop_process

        for p in reversed(self.procs):
            stop_process(p)
        if self.agg is not None:
            self.agg.stop()
        for log in self.logs:
            log.close()


def _connects(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class ParkedWatchers:
    """`n` long-poll clients parked on the aggregator's next revision (nothing is published)."""

    def __init__(self, url: str, n: int, wait: int = 300):
        rev = httpx.get(url + "/v1/metadata").headers["X-Pifarm-Revision"]
        self._stop = False
        self._threads = [threading.Thread(target=self._park, args=(url, rev, wait), daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _park(self, url: str, rev: str, wait: int) -> None:
        with httpx.Client(timeout=wait + 30) as c:
            while not self._stop:
                try:
                    c.get(url + "/v1/metadata", params={"since": rev, "wait": wait})
                except httpx.HTTPError:
                    return

    def close(self) -> None:
        self._stop = True  # the daemon threads end with the process or their next answer


class Load:
    """A steady, bounded inference load: `rate` requests/s spread over the models, one thread."""

    def __init__(self, url: str, models: list[str], rate: float = 20.0):
        self._stop = threading.Event()
        self.ok = self.failed = 0
        self._t = threading.Thread(target=self._run, args=(url, models, rate), daemon=True)
        self._t.start()

    def _run(self, url: str, models: list[str], rate: float) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            bodies = {}
            for m in models:
                inp = c.get(f"/v2/models/{m}").json()["inputs"][0]
                shape = [abs(d) for d in inp["shape"]]
                x = np.random.default_rng(0).random(shape, dtype=np.float32)
                bodies[m] = json.dumps({"inputs": [{"name": inp["name"], "shape": shape, "datatype": inp["datatype"],
                                                    "data": x.reshape(-1).tolist()}]}).encode()  # encoded once
            i = 0
            while not self._stop.wait(1 / rate):
                m = models[i % len(models)]
                i += 1
                r = c.post(f"/v2/models/{m}/infer", content=bodies[m], headers={"content-type": "application/json"})
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed += 1

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=30)


# -- the benches ----------------------------------------------------------------------------------
def i1(work: Path, settle: float = 20.0, window: float = 60.0) -> dict:
    models, origin = model_files(work, 1)
    farm = Farm(work, models, target=True)
    watchers = ParkedWatchers(farm.agg.url, 10)
    try:
        pids = {"node": farm.node.pid, "aggregator": farm.agg.pid, "target": farm.target_pid}
        got = shares(pids, settle, window)
    finally:
        watchers.close()
        farm.close()
    return {"I1": {"what": "idle CPU, % of one core: node serving one model (aggregator with 10 parked "
                           "watchers and userspace target in detail)",
                   "ratio": got["node"]["cpu_pct"], "goal": "<= 1 each",
                   "detail": {**{f"{k}_cpu_pct": v["cpu_pct"] for k, v in got.items()},
                              **{f"{k}_rss_mb": v["rss_mb"] for k, v in got.items()},
                              "models": origin, "settle_s": settle, "window_s": window}}}


def i2(work: Path, minutes: float | None = None, settle: float = 60.0) -> dict:
    minutes = float(os.environ.get("PIFARM_BENCH_I2_MINUTES", "2")) if minutes is None else minutes
    models, origin = model_files(work, 3)
    farm = Farm(work, models)
    pid = farm.node.pid
    try:
        time.sleep(settle)
        idle0 = rss_mb(pid)
        time.sleep(minutes * 60)
        idle1 = rss_mb(pid)
        load = Load(farm.url, list(models))
        try:
            time.sleep(settle)
            load0 = rss_mb(pid)
            time.sleep(minutes * 60)
            load1 = rss_mb(pid)
        finally:
            load.close()
        if load.failed or not load.ok:
            raise RuntimeError(f"load: {load.ok} answered, {load.failed} failed")
    finally:
        farm.close()
    return {
        "I2": {"what": f"idle node RSS after {minutes:g} min / after {settle:g} s settle (three models)",
               "ratio": round(idle1 / idle0, 4), "goal": "<= 1.02",
               "detail": {"rss0_mb": round(idle0, 1), "rss1_mb": round(idle1, 1), "models": origin}},
        "I2-load": {"what": f"node RSS under steady load after {minutes:g} min / after {settle:g} s settle",
                    "ratio": round(load1 / load0, 4), "goal": "<= 1.05",
                    "detail": {"rss0_mb": round(load0, 1), "rss1_mb": round(load1, 1), "requests": load.ok,
                               "models": origin}},
    }


def run(workdir: Path) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))  # tests.support.aggregator / procs
    out: dict[str, dict] = {}
    for part in (i1, i2):
        w = workdir / part.__name__
        w.mkdir()
        try:
            out.update(part(w))
        except Exception as e:  # one part failing must not hide the other's numbers
            print(f"b_idle {part.__name__} failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            shutil.rmtree(w, ignore_errors=True)
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d)), indent=2))

"""Inference server benchmarks (issues 4, 12): P5, P5b, P5c, P6, M1, P8 and, with a real
aggregator, P4.

    P5  server throughput / raw in-process interpreter loop, same model, 1 thread, 1 worker,
        HTTP binary and gRPC at concurrency 1 and 8; the ratio is the worst of the four (goal
        >= 0.9); the detail gives each, the server's CPU per request beyond the invoke's, and
        the time split of a request (decode, queue, compute input/infer/output, encode) from
        the statistics extension
        (each ratio the median over pairs of a raw loop and a server run back to back)
    P5b p50 latency the server adds over one raw invoke, worse of HTTP binary and gRPC (ms; <= 1)
    P5c gRPC / HTTP binary throughput, same model, concurrency 8 (report)
    P6  per model: throughput with batching as the server decides (auto) / without batching;
        the ratio is the worst model (batching must never lower throughput: goal >= 0.95);
        P6h the same with a CPU hog on one core (the decision must hold on a noisy machine)
    M1  resident memory of a `pifarm serve` after 200 repository unload/load cycles (each
        followed by an inference) / after the first load (goal <= 1.1)
    P8  after a version switch: p99 of the first request / steady-state p99 (goal <= 1.25)
    P4  publish of a 5 MB model -> first successful inference on a running `pifarm node run`,
        over loopback, / the same model's raw interpreter load + one invoke (goal: <= 1 s e2e)

Load comes from a separate process (`bench/_loadclient.py`, stdlib only) speaking raw
HTTP/1.1 keep-alive over asyncio streams, or (`bench/_grpcload.py`) grpc.aio with pre-serialised
requests, so the client's own cost stays small next to the server's. Requests use the binary tensor extension (as a Pi client would for image tensors).
The machine is shared: each pair is measured interleaved and the best of a few rounds is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tests.support.models import fetch as fetch_models, model_path
from tests.support.procs import stop_process

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3
P5_PAIRS = 5
P6_ROUNDS = 3


def grpc_load(target: str, model: str, name: str, x: np.ndarray, conc: int, seconds: float, work: Path) -> dict:
    f = work / f"x-{os.getpid()}.npy"
    np.save(f, x)
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("_grpcload.py")), target, model, name, str(f),
                        str(conc), str(seconds)], capture_output=True, text=True, cwd=REPO, timeout=seconds + 120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode != 0:
        raise RuntimeError(f"gRPC load client failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout)
    if res["errors"] or not res["n"]:
        raise RuntimeError(f"gRPC load client saw {res['errors']} errors in {res['n']} requests")
    res["tps"] = res["n"] / res["seconds"]
    return res


def load(url: str, path: str, body: bytes, header_len: int | None, conc: int, seconds: float, work: Path) -> dict:
    f = work / f"body-{os.getpid()}.bin"
    f.write_bytes(body)
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("_loadclient.py")), url, path, str(f),
                        str(header_len or 0), str(conc), str(seconds)], capture_output=True, text=True, cwd=REPO,
                       timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"load client failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout)
    if res["errors"] or not res["n"]:
        raise RuntimeError(f"load client saw {res['errors']} errors in {res['n']} requests")
    res["tps"] = res["n"] / res["seconds"]
    return res


# -- helpers ---------------------------------------------------------------------------------------
def binary_body(name: str, x: np.ndarray, datatype: str = "FP32") -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), len(head)


def pick_model() -> tuple[str, bytes]:
    """A real model (face_landmark, ~1.2 ms/invoke; `run` fetched it into the models cache)."""
    return "face-landmark", model_path("face_landmark").read_bytes()


def first_input(model: bytes, rows: int = 1) -> tuple[str, np.ndarray]:
    from pifarm.inference.runtime import build_interpreter, resolve

    it = build_interpreter(resolve(), model).interpreter
    d = it.get_input_details()[0]
    shape = [rows] + [int(s) for s in d["shape"][1:]]
    return str(d["name"]), np.random.default_rng(0).random(shape, dtype=np.float32)


class Served:
    """A cache + a real uvicorn serving it on 127.0.0.1:0, in this process."""

    def __init__(self, work: Path, models: dict[str, bytes], settings_models: dict[str, dict]):
        from pifarm.inference.server import create_app
        from pifarm.inference.settings import InferenceSettings
        from tests.inference.helpers import LiveServer, make_cache

        self.tc = make_cache(Path(tempfile.mkdtemp(dir=work)) / "cache")
        self.versions = {}
        for name, data in models.items():
            self.tc.publish(name, 1, data)
            self.versions[name] = 1
        self.app = create_app(InferenceSettings(max_body=64 * 2**20, models=settings_models), self.tc.root, None,
                              grpc_listen="127.0.0.1:0")
        self.srv = LiveServer(self.app)

    def __enter__(self) -> "Served":
        self.srv.__enter__()
        self.url = self.srv.url
        self.grpc = f"127.0.0.1:{self.app.state.grpc_port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while self.http.get("/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"models did not load: {self.http.get('/health').text}")
            time.sleep(0.02)
        return self

    def health(self) -> dict:
        return self.http.get("/health").json()

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.srv.__exit__(*exc)


# -- P5 ---------------------------------------------------------------------------------------------
def _cpu() -> float:
    return time.process_time()  # the server runs in this process: its CPU, and only its


def _worker_cpu() -> float:
    """CPU seconds of the pool's worker threads (invoke, copies in and out); the rest of the
    process's CPU is the protocol's (event loop, gRPC threads)."""
    import threading

    ids = {t.native_id for t in threading.enumerate() if t.name.startswith("infer-")}
    total = 0.0
    for tid in ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def phase_totals(s: Served, name: str) -> dict[str, tuple[int, int]]:
    """(count, ns) of each phase so far, from the server's statistics extension."""
    st = s.http.get(f"/v2/models/{name}/stats").json()["model_stats"][0]
    inf, ext = st["inference_stats"], st["pifarm"]
    d = {k: inf[k] for k in ("queue", "compute_input", "compute_infer", "compute_output")}
    d.update(decode=ext["decode"], encode=ext["encode"], total=inf["success"])
    return {k: (v["count"], v["ns"]) for k, v in d.items()}


def time_split(before: dict, after: dict) -> dict[str, float]:
    """Mean µs per request in each phase between two phase_totals snapshots."""
    return {k: round((after[k][1] - before[k][1]) / max(after[k][0] - before[k][0], 1) / 1e3, 1)
            for k in ("decode", "queue", "compute_input", "compute_infer", "compute_output", "encode", "total")}


def p5(work: Path) -> dict:
    name, model = pick_model()
    inp, x = first_input(model)
    body, hl = binary_body(inp, x)
    one = {"num_threads": 1, "min_workers": 1, "max_workers": 1, "batching": "off"}
    path = f"/v2/models/{name}/infer"
    ratios: dict[str, list[float]] = {}
    tps: dict[str, list[float]] = {}
    adds: dict[str, list[float]] = {}
    cpu_proto: dict[str, list[float]] = {}
    cpu_worker: dict[str, list[float]] = {}
    splits: dict[str, dict] = {}
    raw_cpu = min(raw_cpu_per_invoke(model, x) for _ in range(3))
    raw = RawLoop(work, model, x)
    with Served(work, {name: model}, {name: one}) as s:
        runs = {"http": lambda c, t: load(s.url, path, body, hl, c, t, work),
                "grpc": lambda c, t: grpc_load(s.grpc, name, inp, x, c, t, work)}
        for proto, run in runs.items():
            run(4, 0.5)  # warm
        for _ in range(P5_PAIRS):
            # Each measurement is a pair, raw loop then server, back to back: the pair sees one
            # machine load, and the median over pairs leaves out the bursts of a shared machine.
            for proto, run in runs.items():
                for conc in (1, 8):
                    key = f"{proto}_c{conc}"
                    raw_tps, raw_p50 = raw.run(0.75)
                    c0, w0 = _cpu(), _worker_cpu()
                    r = run(conc, 0.75)
                    worker = _worker_cpu() - w0
                    ratios.setdefault(key, []).append(r["tps"] / raw_tps)
                    tps.setdefault(key, []).append(r["tps"])
                    cpu_proto.setdefault(proto, []).append((_cpu() - c0 - worker) / r["n"] * 1e6)
                    cpu_worker.setdefault(proto, []).append(worker / r["n"] * 1e6)
                    if conc == 1:
                        adds.setdefault(proto, []).append((float(np.percentile(r["lat"], 50)) - raw_p50) * 1e3)
        med = statistics.median
        ratio = {k: med(v) for k, v in ratios.items()}
        added = {k: med(v) for k, v in adds.items()}
        tps_m = {k: med(v) for k, v in tps.items()}
        for proto, run in runs.items():  # a clean split per protocol: fresh statistics of 1 client
            before = phase_totals(s, name)
            run(1, 1.0)
            splits[proto] = time_split(before, phase_totals(s, name))
    raw.close()
    worst = min(ratio.values())
    load_avg = round(os.getloadavg()[0], 1)
    return {
        "P5": {"what": f"server throughput / raw interpreter loop ({name}, 1 thread, 1 worker), worst of HTTP "
                       "binary and gRPC at concurrency 1 and 8",
               "ratio": round(worst, 3), "goal": ">=0.9",
               "detail": {**{k: round(v, 3) for k, v in sorted(ratio.items())},
                          **{f"{k}_per_s": round(v, 1) for k, v in sorted(tps_m.items())},
                          # CPU per request: the protocol's threads, the worker's (invoke + copies)
                          "cpu_us_protocol": {k: round(statistics.median(v)) for k, v in cpu_proto.items()},
                          "cpu_us_worker": {k: round(statistics.median(v)) for k, v in cpu_worker.items()},
                          "pairs": P5_PAIRS,
                          "cpu_us_raw_invoke": round(raw_cpu * 1e6),
                          "split_us_http_c1": splits.get("http"), "split_us_grpc_c1": splits.get("grpc"),
                          "load_avg": load_avg}},
        "P5b": {"what": "p50 latency the server adds over one raw invoke, ms, worse of HTTP binary and gRPC "
                        "(1 client, keep-alive)",
                "ratio": round(max(added.values()), 3), "goal": "<=1.0",
                "detail": {f"{k}_ms": round(v, 3) for k, v in added.items()} | {"load_avg": load_avg}},
        "P5c": {"what": "gRPC / HTTP binary throughput, same model, concurrency 8",
                "ratio": round(statistics.median(g / h for g, h in zip(tps["grpc_c8"], tps["http_c8"])), 3),
                "goal": "report",
                "detail": {"grpc_per_s": round(tps_m["grpc_c8"], 1), "http_per_s": round(tps_m["http_c8"], 1)}},
    }


class RawLoop:
    """bench/_rawloop.py kept running: a bare interpreter loop in a process of its own."""

    def __init__(self, work: Path, model: bytes, x: np.ndarray):
        (work / "raw.tflite").write_bytes(model)
        np.save(work / "raw.npy", x)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_rawloop.py")),
                                      str(work / "raw.tflite"), str(work / "raw.npy")], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw loop process did not start")

    def run(self, seconds: float) -> tuple[float, float]:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return r["tps"], r["p50"]

    def close(self) -> None:
        self.proc.stdin.close()
        stop_process(self.proc, timeout=5)


def raw_cpu_per_invoke(model: bytes, x: np.ndarray, n: int = 200) -> float:
    """CPU seconds of one bare invoke with the same copies in and out (the server's floor)."""
    from pifarm.inference.runtime import build_interpreter, resolve

    it = build_interpreter(resolve(), model, 1).interpreter
    d = it.get_input_details()[0]
    outs = [o["index"] for o in it.get_output_details()]
    c0 = _cpu()
    for _ in range(n):
        it.set_tensor(d["index"], x)
        it.invoke()
        for o in outs:
            np.array(it.get_tensor(o))
    return (_cpu() - c0) / n


# -- P6 ---------------------------------------------------------------------------------------------
class CpuHog:
    """A busy loop pinned to one core, in its own process, for the noisy run of P6."""

    def __enter__(self) -> "CpuHog":
        code = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc, timeout=5)


def p6_models() -> dict[str, bytes]:
    from pifarm.appliance.demo.samplemodel import large_model, linear_model

    models = {"sample-linear": linear_model(16, 4, 0), "sample-large": large_model(0)}
    for f, n in (("face_landmark", "face-landmark"), ("selfie_segmentation", "selfie-segmentation")):
        models[n] = model_path(f).read_bytes()
    return models


def p6_once(work: Path, models: dict[str, bytes]) -> tuple[float, dict[str, str]]:
    from pifarm.inference.model import PENDING

    detail: dict[str, str] = {}
    worst = float("inf")
    modes = ("off", "auto", "on")
    for name, model in models.items():
        inp, x = first_input(model)
        body, hl = binary_body(inp, x)
        path = f"/v2/models/{name}/infer"
        cfgs = {m: {"num_threads": 1, "min_workers": 1, "max_workers": 1, "batching": m, "max_batch": 8,
                    "max_delay_ms": 2.0} for m in modes}
        # All three servers run at once and are measured in turns, so a burst of load from
        # elsewhere on the machine hits every mode alike; the best round of each counts.
        with Served(work, {name: model}, {name: cfgs["off"]}) as off, \
                Served(work, {name: model}, {name: cfgs["auto"]}) as auto, \
                Served(work, {name: model}, {name: cfgs["on"]}) as on:
            servers = {"off": off, "auto": auto, "on": on}
            deadline = time.monotonic() + 60
            while auto.health()["models"][name]["batching"]["reason"] == PENDING and time.monotonic() < deadline:
                time.sleep(0.05)
            calibrated = auto.health()["models"][name]["batching"]["enabled"]
            # Sustained load first, as a serving node sees it: the live check re-decides under it.
            load(auto.url, path, body, hl, 8, 4.0, work)
            tps = {m: 0.0 for m in modes}
            for s in (off, on):
                load(s.url, path, body, hl, 8, 0.3, work)
            for _ in range(P6_ROUNDS):
                for m, s in servers.items():
                    tps[m] = max(tps[m], load(s.url, path, body, hl, 8, 1.0, work)["tps"])
            final = auto.health()["models"][name]["batching"]
        measured = tps["auto"] / tps["off"]
        # When auto ends up not batching its server runs exactly the "off" configuration: the
        # ratio is 1 by construction and the measured one is only the machine's noise (shown).
        ratio = measured if final["enabled"] else 1.0
        worst = min(worst, ratio)
        verdict = ("batches" if final["enabled"] else "no batching") + \
            (f" after live check, calibrated {'on' if calibrated else 'off'}"
             if final["reason"].startswith("live check") else "")
        detail[name] = (f"auto({verdict})/off={measured:.2f} on/off={tps['on'] / tps['off']:.2f} "
                        f"off={tps['off']:.0f}/s")
    return worst, detail


def p6(work: Path) -> dict:
    models = p6_models()
    quiet, detail = p6_once(work, models)
    with CpuHog():
        noisy, detail_h = p6_once(work, models)
    what = "micro-batching: throughput as the server decides / unbatched, worst model"
    return {"P6": {"what": what, "ratio": round(quiet, 3), "goal": ">=0.95 (never lower)",
                   "detail": {**detail, "load_avg": round(os.getloadavg()[0], 1)}},
            "P6h": {"what": what + ", with a CPU hog on one core", "ratio": round(noisy, 3),
                    "goal": ">=0.95 (never lower)", "detail": {**detail_h, "load_avg": round(os.getloadavg()[0], 1)}}}


# -- M1 ---------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def m1(work: Path, cycles: int = 200) -> dict:
    from tests.inference.helpers import make_cache
    from tests.support.procs import free_port, start_pifarm

    name, model = pick_model()
    inp, x = first_input(model)
    body, hl = binary_body(inp, x)
    tc = make_cache(work / "cache")
    tc.publish(name, 1, model)
    cfg = work / "serve.toml"
    cfg.write_text(f'[inference]\ngrpc_listen = "off"\ntoken = "t"\n[inference.models.{name}]\n'
                   'num_threads = 1\nbatching = "off"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_pifarm(["serve", "--cache", str(tc.root), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                        work / "serve.log", f"{url}/v2/health/ready", timeout=60, ready_any_status=False)
    auth = {"authorization": "Bearer t"}
    infer_headers = {"inference-header-content-length": str(hl)}
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            def infer() -> None:
                r = c.post(f"/v2/models/{name}/infer", content=body, headers=infer_headers)
                if r.status_code != 200:
                    raise RuntimeError(f"infer failed: {r.status_code} {r.text[:200]}")

            for _ in range(20):
                infer()
            first = rss_kib(proc.popen.pid)
            for i in range(cycles):
                for op in ("unload", "load"):
                    r = c.post(f"/v2/repository/models/{name}/{op}", headers=auth)
                    if r.status_code != 200:
                        raise RuntimeError(f"{op} {i} failed: {r.status_code} {r.text[:200]}")
                infer()
            time.sleep(0.5)
            last = rss_kib(proc.popen.pid)
    finally:
        proc.stop()
    return {"M1": {"what": f"server RSS after {cycles} unload/load cycles / after the first load ({name})",
                   "ratio": round(last / first, 3), "goal": "<=1.1",
                   "detail": {"first_mib": round(first / 1024, 1), "after_mib": round(last / 1024, 1)}}}


# -- P8 ---------------------------------------------------------------------------------------------
def p8(work: Path, switches: int = 20) -> dict:
    name, model = pick_model()
    inp, x = first_input(model)
    body = json.dumps({"inputs": [{"name": inp, "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    headers = {"inference-header-content-length": str(len(body))}
    payload = body + x.tobytes()
    first: list[float] = []
    with Served(work, {name: model}, {name: {"num_threads": 1, "batching": "off"}}) as s:
        c = s.http

        def timed() -> float:
            t = time.perf_counter()
            r = c.post(f"/v2/models/{name}/infer", content=payload, headers=headers)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            return dt

        for _ in range(20):
            timed()
        steady = [timed() for _ in range(300)]
        for v in range(2, switches + 2):
            s.tc.publish(name, v, model)  # same bytes, new signed version: a full reload and warm-up
            deadline = time.monotonic() + 60
            while c.get(f"/v2/models/{name}/versions/{v}/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"version {v} never became ready: {s.health()}")
                time.sleep(0.005)
            first.append(timed())
            for _ in range(10):
                steady.append(timed())
    p99_first = float(np.percentile(first, 99))
    p99_steady = float(np.percentile(steady, 99))
    return {"P8": {"what": f"first-request p99 after a version switch / steady-state p99 ({name})",
                   "ratio": round(p99_first / p99_steady, 3), "goal": "<=1.25",
                   "detail": {"switches": switches, "first_p99_ms": round(p99_first * 1e3, 3),
                              "steady_p99_ms": round(p99_steady * 1e3, 3),
                              "first_p50_ms": round(float(np.percentile(first, 50)) * 1e3, 3),
                              "load_avg": round(os.getloadavg()[0], 1)}}}


# -- P4 ---------------------------------------------------------------------------------------------
def p4(work: Path) -> dict:
    from pifarm.appliance.demo.samplemodel import large_model
    from pifarm.inference.runtime import build_interpreter, resolve
    from tests.support.aggregator import start_aggregator
    from tests.support.procs import free_port

    model = large_model(0)
    f = work / "model.tflite"
    f.write_bytes(model)
    t = time.perf_counter()
    it = build_interpreter(resolve(), model, 1).interpreter
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.ones(d["shape"], np.float32))
    it.invoke()
    baseline = time.perf_counter() - t

    agg = start_aggregator(work / "agg")
    port = free_port()
    node_dir = work / "node"
    node_dir.mkdir()
    cfg = node_dir / "node.toml"
    cfg.write_text(f'[node]\ntrusted_keys = ["{agg.pubkey}"]\n[cache]\nscrub_interval = 0.0\n'
                   f'[inference.models.big]\nnum_threads = 1\n')
    log = open(node_dir / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", agg.url, "--config", str(cfg),
                             "--cache", str(node_dir / "cache"), "--state-dir", str(node_dir / "state"),
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    x = np.ones((1, 1024), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            deadline = time.monotonic() + 60
            while True:  # the node is up when its server answers (503: nothing loaded yet)
                try:
                    c.get("/v2/health/live")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or node.poll() is not None:
                        raise RuntimeError("node inference server did not come up: "
                                           + (node_dir / "node.log").read_text()[-2000:])
                    time.sleep(0.05)
            t0 = time.perf_counter()
            with agg.client() as rc:
                rc.publish(f, "big", "stable")
            deadline = time.monotonic() + 120
            while True:
                r = c.post("/v2/models/big/infer", json=body)
                if r.status_code == 200 and r.json()["model_version"] == "1":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no inference after 120 s: {r.status_code} {r.text[:300]}")
                time.sleep(0.002)
            e2e = time.perf_counter() - t0
    finally:
        stop_process(node)
        agg.stop()
        log.close()
    return {"P4": {"what": "publish 5 MB model -> first inference on a running node / raw load + one invoke",
                   "ratio": round(e2e / baseline, 3), "goal": "e2e <= 1 s",
                   "detail": {"e2e_s": round(e2e, 3), "raw_load_invoke_s": round(baseline, 4)}}}


def run(workdir: Path) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))  # tests.inference.helpers / tests.support.aggregator
    fetch_models()  # a no-op when `make models` already filled the cache
    out: dict[str, dict] = {}
    for part in (p5, p6, m1, p8, p4):
        w = workdir / part.__name__
        w.mkdir()
        try:
            out.update(part(w))
        except Exception as e:  # one part failing must not hide the others' numbers
            print(f"b_inference {part.__name__} failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            shutil.rmtree(w, ignore_errors=True)
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d)), indent=2))

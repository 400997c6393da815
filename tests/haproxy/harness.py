"""A real farm behind a real HAProxy, for the traffic tests, H1/H2 and the soak.

    farm = HaFarm(root, nodes_wanted=3).start()     # aggregator ([haproxy] sync inside) + nodes
    farm.publish(...); farm.render(); farm.start_haproxy()
    with Load(farm.frontend, clients=4) as load: ...; load.results
    farm.degrade(i) / farm.heal(i)                  # node i's metadata path cut: degraded mode
    farm.servers() -> {backend: {server: ServerState}} # HAProxy's own view (Runtime API)

Nodes reach the aggregator through a second HAProxy ("link"), one frontend per node, so one
node's metadata path can be cut (`set server ... state maint`) while its reports still arrive:
that is a node in degraded mode (serving from its cache) that the fleet can see.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from pifarm.appliance.haproxy.runtime import Runtime
from pifarm.initiator.identity import ensure_identity
from pifarm.registry.fleet_api import load_token_key, node_token
from tests.fleet.farm import MODEL, Farm, Node
from tests.support.aggregator import start_aggregator
from tests.support.procs import free_port, run_cli, start_pifarm
from tests.support.wait import wait_for


def haproxy_exe() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


class HAProxyProc:
    """`haproxy -W -db -f CFG` (master-worker, foreground): reload = SIGUSR2 to the master."""

    def __init__(self, cfg: Path, socket_path: str, log: Path):
        self.cfg, self.socket, self.log = cfg, socket_path, log
        self.popen: subprocess.Popen | None = None
        self.pidfile = Path(str(cfg) + ".pid")

    def start(self, timeout: float = 30) -> "HAProxyProc":
        exe = haproxy_exe()
        check = subprocess.run([exe, "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"haproxy -c refused {self.cfg}:\n{check.stdout}{check.stderr}"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen([exe, "-W", "-db", "-f", str(self.cfg), "-p", str(self.pidfile)],
                                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        rt = Runtime(self.socket)
        loaded = self.output(full=True).count("Loading success.")

        def up():
            if self.popen.poll() is not None:
                raise AssertionError(f"haproxy exited {self.popen.returncode}:\n{self.output()}")
            if self.output(full=True).count("Loading success.") <= loaded:
                return False  # the master handles a reload signal (USR2) only from here on
            try:
                return "Pid" in rt.info()
            except Exception:
                return False
        wait_for(up, "haproxy's runtime socket", timeout)
        return self

    def reload(self) -> None:
        os.kill(self.popen.pid, signal.SIGUSR2)

    def stop(self) -> None:
        """Stop the master and its workers, and return only when none is left: the master can exit
        while a worker still holds the runtime socket, and a caller that probes the socket then
        would get a reset from a dying worker instead of "not there" (CI saw exactly that)."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # start_new_session: the master leads its own group
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.popen = None

        def group_gone():  # no live member left (a zombie awaiting its reaper holds no socket)
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) == pgid and fields[0] != "Z":
                        return False
            return True
        try:
            wait_for(group_gone, "haproxy's workers to exit", 15, interval=0.05)
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            wait_for(group_gone, "haproxy's workers to die", 10, interval=0.05)

    def kill(self) -> None:
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(timeout=10)
            self.popen = None

    def output(self, full: bool = False) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text if full else text[-3000:]


def _link_cfg(sock: str, agg_port: int, ports: list[int]) -> str:
    out = ["global", f"    stats socket {sock} mode 600 level admin", "defaults", "    mode http",
           "    timeout connect 1s", "    timeout client 120s", "    timeout server 120s", ""]
    for i, p in enumerate(ports):
        out += [f"frontend node{i}", f"    bind 127.0.0.1:{p}",
                f"    use_backend meta{i} if {{ path_beg /v1/metadata }}", f"    default_backend rest{i}",
                f"backend meta{i}", f"    server agg 127.0.0.1:{agg_port}",
                f"backend rest{i}", f"    server agg 127.0.0.1:{agg_port}", ""]
    return "\n".join(out) + "\n"


@dataclass
class HaFarm(Farm):
    haproxy_extra: str = ""
    #: the sync's pace and HAProxy's checks (tests: quick; benches pass "" for the defaults)
    sync_settings: str = "interval = 0.25\nprobe_interval = 0.1\ncheck_inter = 1.0\n"
    sync_in_aggregator: bool = True
    short: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pfhx", dir="/tmp")))
    frontend_port: int = field(default_factory=free_port)
    link_ports: list[int] = field(default_factory=list)
    proxy: HAProxyProc | None = None
    link: HAProxyProc | None = None

    @property
    def socket(self) -> str:
        return str(self.short / "haproxy.sock")

    @property
    def cfg(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def frontend(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}"

    def agg_config(self) -> Path:
        p = self.root / "aggregator.toml"
        reload = f"sh -c 'kill -USR2 $(cat {self.cfg}.pid)'"
        sock = self.socket if self.sync_in_aggregator else ""
        p.write_text(f'[haproxy]\nsocket = "{sock}"\nconfig = "{self.cfg}"\nreload_command = "{reload}"\n'
                     f'bind = "127.0.0.1:{self.frontend_port}"\n{self.sync_settings}{self.haproxy_extra}')
        return p

    def start(self) -> "HaFarm":
        """As Farm.start, with the [haproxy] aggregator config and the nodes behind the link."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.agg = start_aggregator(self.root / "agg", config=self.agg_config())
        key = load_token_key(self.agg.data_dir)
        self.link_ports = [free_port() for _ in range(self.nodes_wanted)]
        for i in range(self.nodes_wanted):
            root = self.root / f"node{i}"
            ident = ensure_identity(root / "identity")
            (root / "node.toml").write_text(
                f'[node]\ntrusted_keys = ["{self.agg.pubkey}"]\nhost_identity = "{root / "identity"}"\n'
                f'report_interval = {self.report_interval}\nreport_token = "{node_token(key, ident.hostid)}"\n'
                f'[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
                f'[inference]\ngrpc_listen = "off"\n[inference.models.{MODEL}]\nnum_threads = 1\n')
            self.nodes.append(Node(i, root, free_port(), ident.hostid))
        for n in self.nodes:
            self.start_node(n.index)
        return self

    def start_node(self, i: int):
        if self.link is None:
            self.link_cfg = self.root / "link.cfg"
            self.link_cfg.write_text(_link_cfg(str(self.short / "link.sock"), self.agg.port, self.link_ports))
            self.link = HAProxyProc(self.link_cfg, str(self.short / "link.sock"), self.root / "link.log").start()
        n = self.nodes[i]
        n.proc = start_pifarm(["node", "run", "--aggregator", f"http://127.0.0.1:{self.link_ports[i]}",
                               "--config", str(n.root / "node.toml"), "--cache", str(n.root / "cache"),
                               "--state-dir", str(n.root / "state"), "--listen", f"127.0.0.1:{n.port}"],
                              n.root / "node.log", f"{n.url}/v2/health/live", timeout=90)
        return n

    # -- degraded mode: the node's metadata path cut, its reports still arriving -------------
    def degrade(self, i: int) -> None:
        rt = Runtime(self.link.socket)
        rt.command(f"set server meta{i}/agg state maint")
        rt.command(f"shutdown sessions server meta{i}/agg")  # the parked long-poll too

    def heal(self, i: int) -> None:
        Runtime(self.link.socket).command(f"set server meta{i}/agg state ready")

    # -- the HAProxy in front ----------------------------------------------------------------
    def render(self, out: Path | None = None, socket: str | None = None,
               port: int | None = None) -> subprocess.CompletedProcess:
        r = run_cli(["haproxy", "render", "--registry", self.agg.url, "--config", str(self.root / "aggregator.toml"),
                     "--bind", f"127.0.0.1:{port or self.frontend_port}", "--socket", socket or self.socket,
                     "--out", str(out or self.cfg)])
        assert r.returncode == 0, r.stderr
        return r

    def start_haproxy(self) -> HAProxyProc:
        self.proxy = HAProxyProc(self.cfg, self.socket, self.root / "haproxy.log").start()
        return self.proxy

    def runtime(self) -> Runtime:
        return Runtime(self.socket)

    def servers(self):
        return self.runtime().servers()

    def server_name(self, i: int) -> str:
        from pifarm.appliance.haproxy.plan import safe_name

        return safe_name(self.nodes[i].node_id)

    def sync_health(self) -> dict:
        return httpx.get(self.agg.url + "/health", timeout=10).json().get("haproxy") or {}

    def stop(self) -> None:
        for p in (self.proxy, self.link):
            if p is not None:
                p.stop()
        super().stop()
        shutil.rmtree(self.short, ignore_errors=True)

    def logs(self) -> str:
        extra = f"\n--- haproxy\n{self.proxy.output() if self.proxy else ''}"
        try:
            extra += "\n--- sync events\n" + "\n".join(e for _, e in self.sync_health().get("events", []))
        except Exception:
            pass
        return super().logs() + extra


BODY = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": np.ones(16, np.float32).tolist()}]}


@dataclass
class Result:
    t: float
    label: str
    status: int | None
    server: str | None
    version: str | None
    error: str | None = None


class Load:
    """`clients` threads, each its own keep-alive connection, sending inference requests through
    HAProxy (paced by `interval` per client) until stopped or `max_requests`; every answer kept."""

    def __init__(self, url: str, clients: int = 4, interval: float = 0.005, max_requests: int = 100_000,
                 model: str = MODEL):
        self.url, self.clients, self.interval, self.max = url, clients, interval, max_requests
        self.path = f"/v2/models/{model}/infer"
        self.results: list[Result] = []
        self.label = "start"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set() and len(self.results) < self.max:
                label, t = self.label, time.monotonic()
                try:
                    r = c.post(self.path, json=BODY)
                    v = None
                    if r.status_code == 200:
                        v = str(r.json().get("model_version"))
                    res = Result(t, label, r.status_code, r.headers.get("x-pifarm-server"), v,
                                 None if r.status_code == 200 else r.text[:200])
                except httpx.HTTPError as e:
                    res = Result(t, label, None, None, None, f"{type(e).__name__}: {e}")
                with self._lock:
                    self.results.append(res)
                if self.interval:
                    self._stop.wait(self.interval)

    def __enter__(self) -> "Load":
        for i in range(self.clients):
            t = threading.Thread(target=self._loop, name=f"load{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def mark(self, label: str) -> None:
        self.label = label

    def count(self) -> int:
        return len(self.results)

    def wait_more(self, n: int, timeout: float = 120) -> None:
        """Until `n` more answers came back (a bounded phase of load)."""
        target = len(self.results) + n
        wait_for(lambda: len(self.results) >= target, f"{n} more answers through HAProxy", timeout)

    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]

    def shares(self, label: str) -> dict[str, float]:
        rows = [r for r in self.results if r.label == label and r.status == 200]
        out: dict[str, int] = {}
        for r in rows:
            out[r.server] = out.get(r.server, 0) + 1
        return {k: v / len(rows) for k, v in out.items()} if rows else {}


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]

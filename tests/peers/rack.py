"""A simulated rack for the peer tests and bench S1: network namespaces, veth pairs and a bridge.

    with Rack(tmp_path, nodes=4, node_mbit=100, agg_mbit=250) as rack:
        rack.start_aggregator(); rack.start_nodes(peers=True)
        v = rack.publish(path)          # from inside the aggregator's namespace
        rack.wait_version(v)            # every node's cache holds the verified version

One namespace per box: `<prefix>-sw` holds the bridge (the switch), `<prefix>-agg` the real
`pifarm aggregator run`, `<prefix>-n<i>` a real `pifarm node run --no-serve`. Links are shaped
with tc token buckets both ways: a node's uplink in its namespace, its downlink on its switch
port; the aggregator's uplink likewise. Addresses exist only inside these namespaces (10.77.0.0/24).
Everything is removed on exit, after a failure too, and namespaces left by a killed earlier run
(prefix `pfr<pid>`, pid gone) are removed at the start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pifarm.initiator.identity import ensure_identity
from pifarm.registry.fleet_api import load_token_key, node_token
from tests.support.wait import wait_for

PREFIX = "pfr"
NET = "10.77.0"
AGG_IP = f"{NET}.1"
PORT = 8470
PIECE_PORT = 8070
MTU = 65000
MODEL = "m"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def have_tools() -> str | None:
    """None when this machine can build a rack, else why not."""
    if os.geteuid() != 0:
        return "the rack needs root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install iproute2)"
    return None


def cleanup_stale() -> list[str]:
    """Remove namespaces of earlier runs whose process is gone."""
    out = sh("ip", "netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{PREFIX}(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _kill_in(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def _kill_in(ns: str) -> None:
    """Kill whatever still runs in a namespace we made (only processes inside it)."""
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


#: the queue of each shaped link: 200 ms is ~20 jumbo frames at 50 Mbit/s (a switch port holds
#: hundreds of 1500-byte ones); with 50 ms, 16 flows on the aggregator's port lost 13 % of their
#: packets and one stalled past its 30 s read timeout
LATENCY_MS = 200


def shape(ns: str, dev: str, mbit: float) -> None:
    # token bucket: burst ~ 5 ms at the rate, at least two jumbo frames; queue LATENCY_MS
    burst = max(2 * MTU, int(mbit * 1e6 / 8 * 0.005))
    sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
       "burst", str(burst), "latency", f"{LATENCY_MS}ms")


@dataclass
class Box:
    name: str  # namespace
    ip: str
    root: Path
    proc: subprocess.Popen | None = None
    node_id: str = ""

    @property
    def log(self) -> Path:
        return self.root / "log"

    def output(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""


@dataclass
class Rack:
    root: Path
    nodes: int = 4
    node_mbit: float = 100.0
    agg_mbit: float = 250.0
    prefix: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    agg: Box | None = None
    boxes: list[Box] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    def __enter__(self) -> "Rack":
        cleanup_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- network ------------------------------------------------------------------------------
    def _ns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _build(self) -> None:
        sw = self._ns("sw")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        self.root.mkdir(parents=True, exist_ok=True)
        self.agg = self._port(sw, "agg", AGG_IP, self.agg_mbit, None)
        for i in range(self.nodes):
            self.boxes.append(self._port(sw, f"n{i}", f"{NET}.{10 + i}", self.node_mbit, self.node_mbit))

    def _port(self, sw: str, name: str, ip: str, up_mbit: float, down_mbit: float | None) -> Box:
        ns = self._ns(name)
        # created inside the box's namespace, the peer end moved to the switch: nothing in the root namespace
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p-{name}", "netns", sw)
        # jumbo frames: the simulation's cost is per packet (softirq on 2 cores), the shaping per byte
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(MTU))
        sh("ip", "-n", sw, "link", "set", f"p-{name}", "mtu", str(MTU))
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", sw, "link", "set", f"p-{name}", "master", "br0")
        sh("ip", "-n", sw, "link", "set", f"p-{name}", "up")
        shape(ns, "eth0", up_mbit)
        if down_mbit:
            shape(sw, f"p-{name}", down_mbit)
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        return Box(ns, ip, root)

    def close(self) -> None:
        self.stop_nodes()
        if self.agg:
            self._stop(self.agg)
        for ns in reversed(self.made):
            _kill_in(ns)
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, box: Box, args: list[str]) -> None:
        with open(box.log, "ab") as out:
            box.proc = subprocess.Popen(["ip", "netns", "exec", box.name, sys.executable, "-m", "pifarm", *args],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @staticmethod
    def _stop(box: Box, kill: bool = False) -> None:
        p = box.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        box.proc = None

    def in_ns(self, box: Box, code: str, timeout: float = 600) -> str:
        r = subprocess.run(["ip", "netns", "exec", box.name, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"in {box.name}: {r.stderr[-2000:]}")
        return r.stdout

    @property
    def url(self) -> str:
        return f"http://{AGG_IP}:{PORT}"

    def start_aggregator(self) -> None:
        a = self.agg
        self._spawn(a, ["aggregator", "run", "--data-dir", str(a.root / "data"), "--listen", f"{AGG_IP}:{PORT}"])
        code = f"import httpx; print(httpx.get('{self.url}/health', timeout=2).status_code)"

        def up():
            if a.proc.poll() is not None:
                raise AssertionError(f"aggregator exited:\n{a.output()}")
            try:
                return self.in_ns(a, code, timeout=20).strip() == "200"
            except (RuntimeError, subprocess.TimeoutExpired):
                return False
        wait_for(up, "aggregator up", 90, interval=0.5)

    def node_config(self, i: int, peers: bool, **options) -> Path:
        b = self.boxes[i]
        d = self.agg.root / "data"
        ident = ensure_identity(b.root / "identity")
        b.node_id = ident.hostid
        opts = {"listen": f"{b.ip}:{PIECE_PORT}", **options}
        peers_src = ("[[sources]]\nkind = \"peers\"\ndeadline = 3600\noptions = {"
                     + ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items()) + "}\n") if peers else ""
        cfg = b.root / "node.toml"
        cfg.write_text(
            f'[node]\ntrusted_keys = ["{d / "keys" / "signing.pub"}"]\nhost_identity = "{b.root / "identity"}"\n'
            f'report_interval = 2.0\nreport_token = "{node_token(load_token_key(d), ident.hostid)}"\n'
            f'[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
            f'{peers_src}[[sources]]\nkind = "http"\ndeadline = 3600\n')
        return cfg

    def start_node(self, i: int, peers: bool = True, wait: bool = True, **options) -> Box:
        b = self.boxes[i]
        cfg = self.node_config(i, peers, **options)
        self._spawn(b, ["node", "run", "--no-serve", "--aggregator", self.url, "--config", str(cfg),
                        "--cache", str(b.root / "cache"), "--state-dir", str(b.root / "state")])
        if wait:
            self.wait_started(b, peers)
        return b

    def wait_started(self, b: Box, peers: bool) -> None:
        mark = "serves pieces" if peers else "node"

        def up():
            if b.proc is None or b.proc.poll() is not None:
                raise AssertionError(f"node {b.name} exited:\n{b.output()}")
            return (b.root / "state").exists() and mark in b.output(100_000)
        wait_for(up, f"node {b.name} started", 120, interval=0.3)

    def start_nodes(self, peers: bool = True, **options) -> None:
        for i in range(self.nodes):
            self.start_node(i, peers, wait=False, **options)
        for b in self.boxes:
            self.wait_started(b, peers)

    def kill_node(self, i: int) -> None:
        self._stop(self.boxes[i], kill=True)

    def stop_nodes(self) -> None:
        """SIGTERM to every node at once, then wait for each (SIGKILL after 15 s)."""
        for b in self.boxes:
            if b.proc is not None and b.proc.poll() is None:
                b.proc.send_signal(signal.SIGTERM)
        for b in self.boxes:
            self._stop(b)

    # -- registry and results -----------------------------------------------------------------
    def publish(self, path: Path) -> int:
        d = self.agg.root / "data"
        token = (d / "api-token").read_text().strip()
        code = (f"from pifarm.client.http import AggregatorClient\n"
                f"c = AggregatorClient({self.url!r}, {token!r}, timeout=600)\n"
                f"print(c.publish({str(path)!r}, {MODEL!r}, 'stable', format='raw')['version'])")
        return int(self.in_ns(self.agg, code).strip().splitlines()[-1])

    def active(self, i: int) -> int | None:
        p = self.boxes[i].root / "cache" / "refs" / MODEL / "active"
        try:
            return int(json.loads(p.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None

    def wait_version(self, version: int, timeout: float = 600, nodes: list[int] | None = None) -> float:
        """Seconds until every node (or `nodes`) has `version` active."""
        t0 = time.monotonic()
        which = list(range(self.nodes)) if nodes is None else nodes

        def done():
            for i in which:
                p = self.boxes[i].proc
                if p is None or p.poll() is not None:
                    raise AssertionError(f"node {i} is not running:\n{self.boxes[i].output()}")
            return all(self.active(i) == version for i in which)
        try:
            wait_for(done, f"every node on v{version}", timeout, interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None
        return time.monotonic() - t0

    def stats(self, i: int) -> dict:
        p = self.boxes[i].root / "state" / "peers.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def blob(self, i: int, digest: str) -> Path:
        return self.boxes[i].root / "cache" / "blobs" / "blake3" / digest.split(":", 1)[1]

    def logs(self) -> str:
        out = [f"--- aggregator\n{self.agg.output()}"] if self.agg else []
        out += [f"--- {b.name}\n{b.output(2000)}" for b in self.boxes]
        return "\n".join(out)

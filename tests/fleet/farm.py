"""A real loopback fleet for tests and benches: one `pifarm aggregator run`, N `pifarm node run`
processes serving inference, and a bounded load loop sending requests to every node.

    farm = Farm(tmp_path, nodes=4).start()
    farm.publish(path, format=None) -> version; farm.rollout("start", ...); farm.status()
    farm.serving() -> {node_id: version}; farm.kill_node(i); farm.start_node(i)
    with farm.load(): ...          # requests to every node until the block ends (bounded)
    farm.stop()
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np

from pifarm.initiator.identity import ensure_identity
from pifarm.registry.fleet_api import load_token_key, node_token
from tests.support.aggregator import AggregatorProc
from tests.support.procs import Proc, free_port, run_cli, start_pifarm
from tests.support.wait import wait_for

MODEL = "m"
START_TIMEOUT = 90.0


@dataclass
class Node:
    index: int
    root: Path
    port: int
    node_id: str
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Farm:
    root: Path
    nodes_wanted: int = 4
    report_interval: float = 1.0  # missing after 3 s: a node starved of CPU for a moment is not missing
    agg: AggregatorProc | None = None
    nodes: list[Node] = field(default_factory=list)
    load_errors: int = 0
    load_sent: int = 0

    def start(self) -> "Farm":
        # generous: five processes start together on a shared 2-core box
        self.agg = AggregatorProc(self.root / "agg", free_port()).start(timeout=START_TIMEOUT)
        key = load_token_key(self.agg.data_dir)
        for i in range(self.nodes_wanted):
            root = self.root / f"node{i}"
            ident = ensure_identity(root / "identity")
            node = Node(i, root, free_port(), ident.hostid)
            (root / "node.toml").write_text(
                f'[node]\ntrusted_keys = ["{self.agg.pubkey}"]\nhost_identity = "{root / "identity"}"\n'
                f'report_interval = {self.report_interval}\nreport_token = "{node_token(key, ident.hostid)}"\n'
                f'[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
                f'[inference]\ngrpc_listen = "off"\n[inference.models.{MODEL}]\nnum_threads = 1\n')
            self.nodes.append(node)
            self.prepare_node(node)
        for n in self.nodes:
            self.start_node(n.index)
        return self

    def prepare_node(self, n: Node) -> None:
        """Hook for a farm that dresses its nodes (extra config, tools on PATH) before they start."""

    def node_env(self, n: Node) -> dict[str, str] | None:
        return None

    def start_node(self, i: int) -> Node:
        n = self.nodes[i]
        n.proc = start_pifarm(["node", "run", "--aggregator", self.agg.url, "--config", str(n.root / "node.toml"),
                               "--cache", str(n.root / "cache"), "--state-dir", str(n.root / "state"),
                               "--listen", f"127.0.0.1:{n.port}"], n.root / "node.log", f"{n.url}/v2/health/live",
                              env=self.node_env(n), timeout=START_TIMEOUT)
        return n

    def kill_node(self, i: int) -> None:
        n = self.nodes[i]
        if n.proc is not None:
            n.proc.popen.kill()
            n.proc.popen.wait(timeout=10)
            n.proc = None

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None:
                n.proc.stop()
        if self.agg is not None:
            self.agg.stop()

    def logs(self) -> str:
        out = [f"--- aggregator\n{self.agg.log()[-3000:]}"] if self.agg else []
        out += [f"--- node{n.index}\n{n.proc.output()[-2000:] if n.proc else '(stopped)'}" for n in self.nodes]
        return "\n".join(out)

    # -- registry ----------------------------------------------------------------------------
    def publish(self, path: Path, channel: str | None = None, format: str | None = None) -> int:
        with self.agg.client() as c:
            return c.publish(path, MODEL, channel, format=format)["version"]

    def api(self, method: str, path: str, write: bool = False, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.agg.token}"} if write else {}
        return httpx.request(method, self.agg.url + path, headers=headers, timeout=30, **kw)

    def rollout(self, version: int, **body) -> dict:
        r = self.api("POST", f"/v1/rollouts/{MODEL}", write=True, json={"version": version, **body})
        assert r.status_code == 201, r.text
        return r.json()

    def status(self) -> dict:
        return self.api("GET", f"/v1/rollouts/{MODEL}").json()

    def wait_rollout(self, state: str, timeout: float = 180) -> dict:
        def done():
            s = self.status()
            if s.get("state") in ("promoted", "aborted") and s["state"] != state:
                raise AssertionError(f"rollout ended {s['state']}, not {state}: {s.get('reason')}\n{self.logs()}")
            return s if s.get("state") == state else None
        try:
            return wait_for(done, f"rollout {state}", timeout, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {self.status()}\n{self.logs()}") from None

    def cli(self, *args: str):
        return run_cli(list(args), env={"PIFARM_REGISTRY": self.agg.url, "PIFARM_API_TOKEN": self.agg.token})

    # -- nodes -------------------------------------------------------------------------------
    def serving(self) -> dict[str, int | None]:
        out = {}
        for n in self.nodes:
            try:
                out[n.node_id] = httpx.get(n.url + "/health", timeout=5).json()["models"][MODEL]["version"]
            except (httpx.HTTPError, KeyError, ValueError):
                out[n.node_id] = None
        return out

    def wait_serving(self, version: int, timeout: float = 120) -> None:
        wait_for(lambda: set(self.serving().values()) == {version}, f"every node serving v{version}", timeout,
                 interval=0.2)

    def fleet(self) -> dict[str, dict]:
        return {n["node"]: n for n in self.api("GET", "/v1/fleet").json()["nodes"]}

    @contextlib.contextmanager
    def load(self, interval: float = 0.01, max_requests: int = 200_000) -> Iterator[None]:
        """Requests to every node in turn until the block ends (or max_requests)."""
        stop = threading.Event()
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                            "data": np.ones(16, np.float32).tolist()}]}

        def loop() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set() and self.load_sent < max_requests:
                    for n in self.nodes:
                        try:
                            c.post(f"{n.url}/v2/models/{MODEL}/infer", json=body)
                            self.load_sent += 1
                        except httpx.HTTPError:
                            self.load_errors += 1  # a node being killed or restarted
                    stop.wait(interval)

        t = threading.Thread(target=loop, name="load", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=30)


def wait_reported(farm: Farm, version: int, timeout: float = 60) -> None:
    """Until every node's report says it serves `version`."""
    def ok():
        f = farm.fleet()
        return len(f) == len(farm.nodes) and all(
            (n["report"]["models"].get(MODEL) or {}).get("serving") == version for n in f.values())
    wait_for(ok, f"every node reporting v{version}", timeout, interval=0.2)


@contextlib.contextmanager
def serving_stable(farm: Farm) -> Iterator[Farm]:
    """Start `farm`, publish a good v1 to stable and wait until every node serves and reported it;
    stop the farm when the block ends (the shared set-up of the end-to-end modules)."""
    from tests.fleet import models

    farm.start()
    try:
        v1 = farm.publish(models.good(farm.root / "v1.tflite", seed=1), channel="stable")
        farm.wait_serving(v1)
        wait_reported(farm, v1)
        yield farm
    finally:
        farm.stop()


def now() -> float:
    return time.monotonic()


def as_json(resp: httpx.Response) -> Any:
    return resp.json()

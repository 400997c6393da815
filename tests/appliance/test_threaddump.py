"""Issue 19: `kill -USR1` on a serving node under load dumps every thread and the node keeps serving
(faulthandler's dump from the signal handler used to kill it with SIGSEGV). Real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from tests.support.aggregator import aggregator, aggregator_factory, free_port  # noqa: F401 (fixtures)
from tests.support.procs import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
END = "=== end of thread dump ==="


def _until(cond, what: str, proc: subprocess.Popen, log, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert proc.poll() is None, f"node exited ({proc.returncode}) waiting for {what}:\n{log()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log()[-3000:]}"
        time.sleep(0.05)


class Load:
    """Closed-loop clients posting inferences until stopped; every answer must be a 200."""

    def __init__(self, url: str, clients: int = 4):
        x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
        self.body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
        self.ok, self.bad = 0, []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url,), daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not self._stop.is_set():
                try:
                    r = c.post("/v2/models/sample/infer", json=self.body)
                    good, what = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    good, what = False, f"{type(e).__name__}: {e}"
                with self._lock:
                    if good:
                        self.ok += 1
                    else:
                        self.bad.append(what)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _tids(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.slow
def test_sigusr1_on_a_serving_node_under_load_dumps_every_thread_and_keeps_serving(aggregator, tmp_path):  # noqa: F811
    model = tmp_path / "sample.tflite"
    sm.write_sample(model, "linear", seed=2)
    with aggregator.client() as rc:
        rc.publish(model, "sample", "stable")
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ntrusted_keys = ["{aggregator.pubkey}"]\n[inference]\ngrpc_listen = "127.0.0.1:{free_port()}"\n'
                   '[inference.models.sample]\nmax_workers = 2\n')
    log_path = tmp_path / "node.log"
    out = open(log_path, "wb")
    node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", aggregator.url,
                             "--config", str(cfg), "--cache", str(tmp_path / "cache"), "--state-dir",
                             str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=out)
    log = lambda: log_path.read_text(errors="replace")  # noqa: E731
    url = f"http://127.0.0.1:{port}"
    load = None
    try:
        def serving() -> bool:
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        _until(serving, "the node serving the model", node, log, timeout=90)
        load = Load(url)
        _until(lambda: load.ok >= 50, "the load to get going", node, log)
        for i in range(1, 4):  # several dumps, each while requests are in flight
            before = _tids(node.pid)
            node.send_signal(signal.SIGUSR1)
            _until(lambda: log().count(END) >= i, f"thread dump {i}", node, log)
            after = _tids(node.pid)
            served = load.ok
            _until(lambda: load.ok >= served + 50, f"requests served after dump {i}", node, log)
        load.stop()
        assert node.poll() is None, log()[-3000:]
        assert not load.bad, load.bad[:5]
        dump = log().split("=== pifarm thread dump:")[-1].split(END)[0]
        listed = {int(t) for t in re.findall(r"\btid (\d+)", dump)}
        # Every thread that lived through the dump is in it (workers may come and go around it).
        assert before & after <= listed, (sorted((before & after) - listed), dump[:3000])
        names = set(re.findall(r'--- thread "([^"]+)"', dump))
        for want in ("MainThread", "thread-dump", "model-rescan", "watcher", "tamper-watch", "scrub"):
            assert want in names, (want, sorted(names))
        assert any(n.startswith("infer-sample-") for n in names), sorted(names)
        assert "File " in dump  # stacks, not just names
        r = httpx.post(url + "/v2/models/sample/infer", json=load.body, timeout=30)
        assert r.status_code == 200, r.text
        # The aggregator answers the signal the same way (parked long-polls are its busy part).
        os.kill(aggregator.pid, signal.SIGUSR1)
        _until(lambda: END in aggregator.log(), "the aggregator's thread dump", node, aggregator.log)
        assert "MainThread" in aggregator.log() and "thread-dump" in aggregator.log()
        assert httpx.get(aggregator.url + "/health", timeout=10).status_code == 200
    finally:
        if load is not None:
            load.stop()
        stop_process(node)
        out.close()

"""Done-when of issue 4: `pifarm node run` against a running aggregator serves inference for the
published sample model, and /health flips 503 -> 200 as the model arrives (real processes)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from tests.inference.helpers import REPO
from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401 (fixtures)
from tests.support.procs import free_port, stop_process
from tests.support.wait import wait_http


@pytest.mark.slow
def test_node_run_serves_the_published_sample_model(aggregator, tmp_path):  # noqa: F811
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ntrusted_keys = ["{aggregator.pubkey}"]\n[cache]\nscrub_interval = 0.0\n'
                   '[inference.models.sample]\nnum_threads = 1\n')
    log = open(tmp_path / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", aggregator.url,
                             "--config", str(cfg), "--cache", str(tmp_path / "cache"), "--state-dir",
                             str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = c.get("/health")
                    break
                except httpx.HTTPError:
                    assert node.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-3000:]
                    time.sleep(0.05)
            assert r.status_code == 503 and r.json()["models"]["sample"]["ready"] is False
            model = tmp_path / "sample.tflite"
            sm.write_sample(model, "linear", seed=4)
            with aggregator.client() as rc:
                rc.publish(model, "sample", "stable")
            h = wait_http(c, "/health", lambda r: r.status_code == 200, timeout=60, what="node serving the model").json()
            assert h["models"]["sample"]["version"] == 1 and h["revision"] is not None and h["degraded"] is False
            x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
            r = c.post("/v2/models/sample/infer", json={"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
                                                                    "data": x.reshape(-1).tolist()}]})
            assert r.status_code == 200, r.text
            y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 4)
            assert np.allclose(y, sm.expected("linear", x, 4, in_features=16, out_features=4), atol=1e-5)
    finally:
        stop_process(node)
        log.close()

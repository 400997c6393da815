"""Behaviour users depend on, against a real uvicorn on 127.0.0.1:0 with real HTTP requests:
health flipping 503 -> 200 as models load, hot swap under load, refused versions, real models."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.inference.server import create_app
from pifarm.inference.settings import InferenceSettings
from tests.inference.helpers import REPO, LiveServer, infer_body, make_cache
from tests.support.models import require_models
from tests.support.procs import stop_process
from tests.support.wait import wait_http

LIN = dict(in_features=16, out_features=4)
# ai-edge-litert's Delegate.__del__ raises on a delegate that never loaded; harmless noise.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def y_of(r: httpx.Response) -> np.ndarray:
    o = r.json()["outputs"][0]
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def test_health_flips_from_503_to_200_when_the_configured_model_loads(tmp_path):
    tc = make_cache(tmp_path / "cache")
    app = create_app(InferenceSettings(models={"lin": {}}, state_poll_seconds=0.5), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["ready"] is False and "no active version of lin" in r.json()["models"]["lin"]["error"]
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/lin/ready").status_code == 503
        r = c.post("/v2/models/lin/infer", json=infer_body("x", np.ones((1, 16), np.float32)))
        assert r.status_code == 503 and "not loaded yet" in r.json()["error"]
        tc.publish("lin", 1, sm.linear_model(16, 4, 1))
        r = wait_http(c, "/health", lambda r: r.status_code == 200, what="health 200 after publish")
        assert r.json()["models"]["lin"]["version"] == 1
        assert c.post("/v2/models/lin/infer", json=infer_body("x", np.ones((1, 16), np.float32))).status_code == 200


def test_hot_swap_under_load_drops_no_request_and_answers_from_one_version(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    app = create_app(InferenceSettings(models={"lin": {"max_workers": 2}}), tc.root, None)
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    want = {"1": sm.expected("linear", x, 1, **LIN), "2": sm.expected("linear", x, 2, **LIN)}
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)

        def hammer(n: int) -> list[tuple[int, str, np.ndarray]]:
            out = []
            with httpx.Client(base_url=srv.url, timeout=30) as hc:
                for _ in range(n):
                    r = hc.post("/v2/models/lin/infer", json=infer_body("x", x))
                    out.append((r.status_code, r.json().get("model_version"), y_of(r) if r.status_code == 200 else None))
            return out

        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(hammer, 150) for _ in range(3)]
            time.sleep(0.2)
            tc.publish("lin", 2, sm.linear_model(16, 4, 2))
            results = [r for f in futs for r in f.result(timeout=120)]
        wait_http(c, "/v2/models/lin", lambda r: r.json().get("versions") == ["2"], what="version 2 served")
        results += hammer(5)
    assert all(status == 200 for status, _, _ in results), {s for s, _, _ in results}
    seen = {v for _, v, _ in results}
    assert seen == {"1", "2"}, f"versions seen {seen}"
    for _, v, y in results:
        assert np.allclose(y, want[v], atol=1e-5), f"answer does not match version {v}"
    assert results[-1][1] == "2"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_new_version_is_refused_and_the_old_one_keeps_serving(tmp_path, damage):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    app = create_app(InferenceSettings(), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)
        v2 = sm.linear_model(16, 4, 2)
        ref = tc.publish("lin", 2, v2, activate=False)
        tc.tamper(v2, v2[:100] if damage == "truncate" else v2[:-1] + bytes([v2[-1] ^ 1]))
        tc.cache.set_ref("lin", "active", ref)  # the ref moves; the bytes behind it are bad
        r = wait_http(c, "/health", lambda r: (r.json()["models"]["lin"].get("error") or "") != "", what="refusal")
        h = r.json()
        assert r.status_code == 200 and h["models"]["lin"]["version"] == 1
        assert "version 2" in h["models"]["lin"]["error"]
        assert ("bytes on disk" if damage == "truncate" else "corrupt or tampered") in h["models"]["lin"]["error"]
        x = np.ones((1, 16), np.float32)
        r = c.post("/v2/models/lin/infer", json=infer_body("x", x))
        assert r.json()["model_version"] == "1" and np.allclose(y_of(r), sm.expected("linear", x, 1, **LIN), atol=1e-5)
        assert 'pifarm_inference_model_load_failures_total{model="lin"} 1.0' in c.get("/metrics").text


def test_delegate_failure_falls_back_to_cpu_and_is_reported(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    settings = InferenceSettings(models={"lin": {"delegate": str(tmp_path / "libai_hat_delegate.so"),
                                                 "delegate_options": {"device": "0"}}})
    app = create_app(settings, tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        h = wait_http(c, "/health", lambda r: r.status_code == 200).json()
        assert "running on CPU" in h["models"]["lin"]["delegate_warning"]
        assert 'pifarm_inference_delegate_fallback_total{model="lin"} 1.0' in c.get("/metrics").text
        x = np.ones((2, 16), np.float32)
        r = c.post("/v2/models/lin/infer", json=infer_body("x", x))
        assert np.allclose(y_of(r), sm.expected("linear", x, 1, **LIN), atol=1e-5)


def direct(path, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    for d, a in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], a)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def test_real_models_answer_like_a_direct_interpreter_call(tmp_path):
    models = require_models()
    files = sorted(models.glob("*.tflite"))
    assert files, f"no .tflite files in {models}"
    tc = make_cache(tmp_path / "cache")
    names = {}
    for i, f in enumerate(files):
        name = f.stem.replace("_", "-")
        names[name] = f
        tc.publish(name, 1, f.read_bytes())
    app = create_app(InferenceSettings(max_body=64 * 2**20, models={n: {} for n in names}), tc.root, None)
    rng = np.random.default_rng(0)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200, timeout=120, what="real models loaded")
        for name, path in names.items():
            meta = c.get(f"/v2/models/{name}").json()
            inputs = [rng.random([1 if d == -1 else d for d in t["shape"]], dtype=np.float32) for t in meta["inputs"]]
            body = {"inputs": [{"name": t["name"], "shape": list(a.shape), "datatype": t["datatype"],
                                "data": a.reshape(-1).tolist()} for t, a in zip(meta["inputs"], inputs)]}
            r = c.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, r.text[:300]
            got = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
            want = direct(path, inputs)
            assert set(got) == set(want)
            for k in want:
                assert got[k].shape == want[k].shape
                assert np.allclose(got[k], want[k], rtol=1e-4, atol=1e-4), f"{name} output {k} differs"


def test_pifarm_serve_command_serves_the_cache(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    cfg = tmp_path / "node.toml"
    cfg.write_text('[inference]\nruntime = "ai-edge-litert"\n[inference.models.lin]\nnum_threads = 1\n[cache]\nx = 1\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pifarm", "serve", "--cache", str(tc.root), "--listen", "127.0.0.1:0",
                             "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        m = re.search(r"http://[\d.]+:\d+", line)
        assert m, f"no URL announced; last line {line!r}, exit {proc.poll()}"
        with httpx.Client(base_url=m.group(0), timeout=30) as c:
            h = wait_http(c, "/health", lambda r: r.status_code == 200).json()
            assert h["runtime"].startswith("ai-edge-litert") and h["models"]["lin"]["version"] == 1
    finally:
        stop_process(proc)


def test_pifarm_serve_refuses_bad_config_with_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[inference]\nruntime = "tensorflow"\n')
    (tmp_path / "cache").mkdir()
    r = subprocess.run([sys.executable, "-m", "pifarm", "serve", "--cache", str(tmp_path / "cache"), "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "runtime must be one of" in r.stderr


def test_a_refused_version_is_retried_after_the_cache_repairs_it(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    app = create_app(InferenceSettings(retry_failed_seconds=0.3, state_poll_seconds=0.2), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)
        v2 = sm.linear_model(16, 4, 2)
        ref = tc.publish("lin", 2, v2, activate=False)
        good = tc.blob_path(v2).read_bytes()
        tc.tamper(v2, good[:-1] + bytes([good[-1] ^ 1]))
        tc.cache.set_ref("lin", "active", ref)
        wait_http(c, "/health", lambda r: "corrupt" in (r.json()["models"]["lin"].get("error") or ""), what="refusal")
        tc.blob_path(v2).write_bytes(good)  # what a scrub + re-pull does
        wait_http(c, "/v2/models/lin", lambda r: r.json().get("versions") == ["2"], what="v2 after repair")
        assert c.get("/health").json()["models"]["lin"]["error"] is None


def test_a_truncated_first_version_never_reaches_the_runtime_and_health_says_why(tmp_path):
    tc = make_cache(tmp_path / "cache")
    model = sm.linear_model(16, 4, 1)
    tc.publish("lin", 1, model)
    tc.tamper(model, model[: len(model) - 7])  # a runtime handed this may crash the process
    app = create_app(InferenceSettings(models={"lin": {}}), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = wait_http(c, "/health", lambda r: r.json()["models"]["lin"]["error"] and not r.json()["models"]["lin"]["loading"],
                     what="refusal of v1")
        assert r.status_code == 503
        assert "bytes on disk, manifest says" in r.json()["models"]["lin"]["error"]
        r = c.post("/v2/models/lin/infer", json=infer_body("x", np.ones((1, 16), np.float32)))
        assert r.status_code == 503 and "bytes on disk" in r.json()["error"]
        assert c.get("/v2/health/live").status_code == 200  # the process is alive and answering


def test_concurrent_requests_through_a_batching_server_each_get_their_own_answer(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 6))
    settings = InferenceSettings(models={"lin": {"batching": "on", "max_batch": 8, "max_delay_ms": 20.0,
                                                 "max_workers": 1}})
    with LiveServer(create_app(settings, tc.root, None)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            wait_http(c, "/health", lambda r: r.status_code == 200)

        def ask(i: int) -> tuple[np.ndarray, np.ndarray]:
            x = np.random.default_rng(i).standard_normal((1 + i % 3, 16)).astype(np.float32)
            with httpx.Client(base_url=srv.url, timeout=30) as hc:
                return x, y_of(hc.post("/v2/models/lin/infer", json=infer_body("x", x)))

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(ask, range(48)))
    for x, y in answers:
        assert y.shape == (x.shape[0], 4)
        assert np.allclose(y, sm.expected("linear", x, 6, **LIN), atol=1e-5)


def test_a_prefetched_version_is_loaded_warm_and_swapped_in_without_a_new_load(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    app = create_app(InferenceSettings(), tc.root, None)
    x = np.ones((1, 16), np.float32)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)
        ref = tc.publish("lin", 2, sm.linear_model(16, 4, 2), activate=False)
        tc.cache.set_ref("lin", "prefetched", ref)  # what the watcher does before a switch
        h = wait_http(c, "/health", lambda r: r.json()["models"]["lin"]["prefetched"] == 2, what="v2 warm").json()
        assert h["models"]["lin"]["version"] == 1  # still serving v1
        assert np.allclose(y_of(c.post("/v2/models/lin/infer", json=infer_body("x", x))),
                           sm.expected("linear", x, 1, **LIN), atol=1e-5)
        loads = 'pifarm_inference_model_load_seconds_count{model="lin"} 2.0'
        assert loads in c.get("/metrics").text
        tc.cache.activate("lin", ref)
        wait_http(c, "/v2/models/lin", lambda r: r.json().get("versions") == ["2"], what="v2 served")
        r = c.post("/v2/models/lin/infer", json=infer_body("x", x))
        assert r.json()["model_version"] == "2"
        assert np.allclose(y_of(r), sm.expected("linear", x, 2, **LIN), atol=1e-5)
        assert loads in c.get("/metrics").text, "activating a warm prefetched version loaded it again"
        assert c.get("/health").json()["models"]["lin"]["prefetched"] is None


def test_prefetched_before_its_blob_arrives_is_not_a_failure_and_activation_is_not_delayed(tmp_path):
    tc = make_cache(tmp_path / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    app = create_app(InferenceSettings(state_poll_seconds=0.1), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)
        v2 = sm.linear_model(16, 4, 2)
        ref = tc.publish("lin", 2, v2, activate=False)
        tc.blob_path(v2).unlink()  # the watcher names `prefetched` while the blob is still arriving
        tc.cache.set_ref("lin", "prefetched", ref)
        time.sleep(0.5)  # several rescans try it
        h = c.get("/health").json()["models"]["lin"]
        assert h["version"] == 1 and h["prefetched"] is None and "prefetch_error" not in h and h["error"] is None
        assert 'pifarm_inference_model_load_failures_total{model="lin"}' not in c.get("/metrics").text
        tc.publish("lin", 2, v2)  # blob lands, version activated
        wait_http(c, "/v2/models/lin", lambda r: r.json().get("versions") == ["2"], what="v2 served")

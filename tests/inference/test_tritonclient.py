"""A V2 client nobody here wrote — Triton's `tritonclient` (HTTP and gRPC) — against a real
`pifarm serve` process over a real cache holding the real MediaPipe models.

Every answer is compared with a direct interpreter call on the same input; bad input on both
protocols gets a clear one-line error and the server keeps serving; the repository extension
unloads a model while requests are in flight (they finish) and loads it again from the cache.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pifarm.cache.nodestate import NodeState, write_state
from pifarm.inference.runtime import build_interpreter, resolve
from tests.inference.helpers import make_cache
from tests.support.models import model_path, require_models
from tests.support.procs import free_port, start_pifarm
from tests.support.wait import wait_for

MODELS = {"face-landmark": "face_landmark", "selfie": "selfie_segmentation", "hands": "hand_landmark_full"}
TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_models()
    root = tmp_path_factory.mktemp("triton")
    tc = make_cache(root / "cache")
    blobs = {}
    for served, file in MODELS.items():
        blobs[served] = model_path(file).read_bytes()
        tc.publish(served, 1, blobs[served])
    state = root / "state"
    write_state(state, NodeState(revision=3))
    cfg = root / "serve.toml"
    cfg.write_text('[inference.defaults]\nnum_threads = 1\nmax_workers = 2\nmax_rows = 16\n')
    http_port, grpc_port = free_port(), free_port()
    env = {"PIFARM_INFERENCE_GRPC_LISTEN": f"127.0.0.1:{grpc_port}", "PIFARM_INFERENCE_TOKEN": TOKEN}
    proc = start_pifarm(["serve", "--cache", str(tc.root), "--state-dir", str(state), "--config", str(cfg),
                         "--listen", f"127.0.0.1:{http_port}"], root / "serve.log",
                        f"http://127.0.0.1:{http_port}/v2/health/ready", env=env, timeout=60, ready_any_status=False)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=4, network_timeout=120)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        yield {"http": http, "grpc": grpc, "blobs": blobs, "state": state, "proc": proc,
               "url": f"http://127.0.0.1:{http_port}", "grpc_url": f"127.0.0.1:{grpc_port}"}
    finally:
        http.close()
        grpc.close()
        proc.stop()


def direct(model: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The model's outputs from a bare interpreter on the same input (the reference)."""
    it = build_interpreter(resolve(), model, 1).interpreter
    d = it.get_input_details()[0]
    if tuple(d["shape"]) != x.shape:
        it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    return [np.array(it.get_tensor(o["index"])) for o in it.get_output_details()]


def sample(node, served: str, rows: int = 1, seed: int = 0) -> tuple[dict, np.ndarray]:
    md = node["http"].get_model_metadata(served)
    inp = md["inputs"][0]
    shape = [rows if s == -1 else s for s in inp["shape"]]
    return md, np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_server_and_model_metadata(node):
    http, grpc = node["http"], node["grpc"]
    assert http.is_server_live() and http.is_server_ready() and grpc.is_server_live() and grpc.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "pifarm" and {"model_repository", "statistics", "binary_tensor_data"} <= set(meta["extensions"])
    assert set(grpc.get_server_metadata(as_json=True)["extensions"]) == set(meta["extensions"])
    for served, file in MODELS.items():
        md = http.get_model_metadata(served)
        gmd = grpc.get_model_metadata(served, as_json=True)
        it = build_interpreter(resolve(), node["blobs"][served], 1).interpreter
        want = [(d["name"], list(d["shape"][1:])) for d in it.get_input_details()]
        assert [(i["name"], i["shape"][1:]) for i in md["inputs"]] == want
        assert [o["name"] for o in md["outputs"]] == [d["name"] for d in it.get_output_details()]
        assert gmd["name"] == served and [i["name"] for i in gmd["inputs"]] == [i["name"] for i in md["inputs"]]
        assert [int(s) for s in gmd["inputs"][0]["shape"]] == md["inputs"][0]["shape"]
        assert http.is_model_ready(served) and grpc.is_model_ready(served)


@pytest.mark.parametrize("served", list(MODELS))
def test_infer_json_binary_and_grpc_equal_a_direct_call(node, served):
    md, x = sample(node, served)
    want = direct(node["blobs"][served], x)
    names = [o["name"] for o in md["outputs"]]
    for binary in (False, True):
        inp = httpclient.InferInput(md["inputs"][0]["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
        r = node["http"].infer(served, [inp], outputs=outs, request_id="req-1")
        assert r.get_response()["model_version"] == "1" and r.get_response()["id"] == "req-1"
        for n, w in zip(names, want):
            got = r.as_numpy(n)
            assert got.shape == w.shape
            # JSON carries decimal text; binary and gRPC carry the exact bytes
            assert np.allclose(got, w, rtol=1e-6, atol=1e-6) if not binary else np.array_equal(got, w)
    ginp = grpcclient.InferInput(md["inputs"][0]["name"], list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    g = node["grpc"].infer(served, [ginp], request_id="g-1")
    assert g.get_response().id == "g-1"
    for n, w in zip(names, want):
        assert np.array_equal(g.as_numpy(n), w)
    # one requested output only
    g1 = node["grpc"].infer(served, [ginp], outputs=[grpcclient.InferRequestedOutput(names[-1])])
    assert [o.name for o in g1.get_response().outputs] == [names[-1]]


def test_statistics_count_requests_and_split_the_time(node):
    served = "face-landmark"
    md, x = sample(node, served, seed=5)
    before = node["http"].get_inference_statistics(served)["model_stats"][0]["inference_stats"]["success"]["count"]
    inp = grpcclient.InferInput(md["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(5):
        node["grpc"].infer(served, [inp])
    st = node["http"].get_inference_statistics(served, "1")["model_stats"][0]
    s = st["inference_stats"]
    assert s["success"]["count"] >= before + 5 and st["execution_count"] >= 5 and st["inference_count"] >= 5
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert s[phase]["count"] >= 5 and s[phase]["ns"] > 0, phase
    assert s["compute_infer"]["ns"] <= s["success"]["ns"]
    assert any(b["batch_size"] == 1 and b["compute_infer"]["count"] >= 1 for b in st["batch_stats"])
    g = node["grpc"].get_inference_statistics(served, as_json=True)["model_stats"][0]
    assert g["name"] == served and int(g["inference_stats"]["success"]["count"]) >= s["success"]["count"]
    assert {m["name"] for m in node["http"].get_inference_statistics()["model_stats"]} >= {served}
    with pytest.raises(InferenceServerException, match="not served"):
        node["http"].get_inference_statistics("ghost")
    # the same figures as Prometheus histograms
    metrics = httpx.get(f"{node['url']}/metrics").text
    for phase in ("decode", "queue", "compute_input", "compute_infer", "compute_output", "encode"):
        line = next(x for x in metrics.splitlines() if x.startswith("pifarm_inference_phase_seconds_count")
                    and f'model="{served}"' in x and f'phase="{phase}"' in x)
        assert float(line.split()[-1]) >= 5, line


def test_repository_index_load_unload_over_both_protocols(node):
    http, grpc = node["http"], node["grpc"]
    idx = http.get_model_repository_index()
    assert {(e["name"], e["version"], e["state"]) for e in idx} >= {(m, "1", "READY") for m in MODELS}
    gidx = grpc.get_model_repository_index(as_json=True)["models"]
    assert {e["name"] for e in gidx} == {e["name"] for e in idx}

    # writes need the token: none, then a wrong one
    with pytest.raises(InferenceServerException, match="Bearer"):
        http.unload_model("selfie")
    with pytest.raises(InferenceServerException, match="wrong token"):
        grpc.unload_model("selfie", headers={"authorization": "Bearer nope"})
    assert http.is_model_ready("selfie")

    http.unload_model("selfie", headers=AUTH)
    assert not http.is_model_ready("selfie") and not grpc.is_model_ready("selfie")
    state = {e["name"]: e for e in http.get_model_repository_index()}["selfie"]
    assert state["state"] == "UNAVAILABLE" and state["reason"] == "unloaded"
    assert all(e["name"] != "selfie" for e in http.get_model_repository_index(query_params={}) if e["state"] == "READY")
    md_x = np.zeros((1, 256, 256, 3), np.float32)
    inp = grpcclient.InferInput("input_1", list(md_x.shape), "FP32")
    inp.set_data_from_numpy(md_x)
    with pytest.raises(InferenceServerException, match="unloaded"):
        grpc.infer("selfie", [inp])
    assert http.is_server_ready()  # an unload is the operator's choice: the rest still serves

    grpc.load_model("selfie", headers=AUTH)
    assert http.is_model_ready("selfie")
    md, x = sample(node, "selfie", seed=3)
    inp = grpcclient.InferInput(md["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert np.array_equal(grpc.infer("selfie", [inp]).as_numpy(md["outputs"][0]["name"]),
                          direct(node["blobs"]["selfie"], x)[0])
    with pytest.raises(InferenceServerException, match="not in the cache|no active version"):
        http.load_model("ghost", headers=AUTH)


def test_unload_while_serving_lets_in_flight_requests_finish(node):
    http = node["http"]
    served = "face-landmark"
    md, x = sample(node, served, seed=9)
    want = direct(node["blobs"][served], x)[0]
    name = md["inputs"][0]["name"]
    stop = threading.Event()
    results: list[str] = []

    def hammer() -> None:
        c = grpcclient.InferenceServerClient(node["grpc_url"])
        inp = grpcclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            while not stop.is_set():
                try:
                    out = c.infer(served, [inp]).as_numpy(md["outputs"][0]["name"])
                    results.append("ok" if np.array_equal(out, want) else "wrong")
                except InferenceServerException as e:
                    results.append("unloaded" if "unloaded" in str(e) else f"error: {e}")
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(hammer) for _ in range(3)]
        wait_for(lambda: results.count("ok") >= 5 or any(f.done() for f in futs), "requests flowing", 60, interval=0.01)
        http.unload_model(served, headers=AUTH)
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 3 or any(f.done() for f in futs), "requests after the unload", 60,
                 interval=0.01)
        stop.set()
        for f in futs:
            f.result(timeout=60)
    assert "ok" in results and "unloaded" in results
    assert set(results) <= {"ok", "unloaded"}, [r for r in results if r not in ("ok", "unloaded")][:3]
    http.load_model(served, headers=AUTH)
    assert http.is_model_ready(served)


BAD_HTTP = [
    # (model, tensor spec, expected status, message fragment)
    ("ghost", None, 404, "not served"),
    ("face-landmark/versions/7", None, 404, "version"),
    ("face-landmark", {"datatype": "INT32"}, 400, "datatype INT32 given"),
    ("face-landmark", {"shape": [1, 10, 10, 3]}, 400, "shape [1, 10, 10, 3] given"),
    ("face-landmark", {"shape": [1, 192, 192, -3]}, 400, "shape"),
    ("face-landmark", {"shape": [10**12, 192, 192, 3]}, 400, "max_rows"),
    ("face-landmark", {"shape": [17, 192, 192, 3]}, 400, "max_rows"),
    ("face-landmark", {"size": 100}, 400, "needs 442368 bytes"),
]


@pytest.mark.parametrize("model,change,status,fragment", BAD_HTTP)
def test_bad_input_over_http_is_one_clear_error(node, model, change, status, fragment):
    x = np.zeros((1, 192, 192, 3), np.float32)
    t = {"name": "input_1", "shape": list(x.shape), "datatype": "FP32"}
    raw = x.tobytes()
    if change:
        size = change.pop("size", None)
        t.update(change)
        if size is not None:
            raw = raw[:size]
    t["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [t]}).encode()
    url = f"{node['url']}/v2/models/{model}/infer"
    r = httpx.post(url, content=head + raw, headers={"inference-header-content-length": str(len(head))}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err and "\n" not in err
    assert node["http"].is_server_ready()


def test_truncated_binary_body_and_bad_json_over_http(node):
    url = f"{node['url']}/v2/models/face-landmark/infer"
    head = b'{"inputs":[{"name":"input_1","shape":[1,192,192,3],"datatype":"FP32","parameters":{"binary_data_size":442368}}]}'
    r = httpx.post(url, content=head + b"\0" * 1000, headers={"inference-header-content-length": str(len(head))})
    assert r.status_code == 400 and "runs past the end" in r.json()["error"]
    r = httpx.post(url, content=head[:20], headers={"inference-header-content-length": "500"})
    assert r.status_code == 400 and "does not fit" in r.json()["error"]
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    md, x = sample(node, "face-landmark")
    inp = httpclient.InferInput(md["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert node["http"].infer("face-landmark", [inp]).as_numpy(md["outputs"][0]["name"]) is not None


def test_bad_input_over_grpc_is_one_clear_error(node):
    grpc = node["grpc"]
    x = np.zeros((1, 192, 192, 3), np.float32)

    def infer(model="face-landmark", shape=(1, 192, 192, 3), datatype="FP32", data=None, version=""):
        inp = grpcclient.InferInput("input_1", list(shape), datatype)
        inp._raw_content = (x.tobytes() if data is None else data)
        return grpc.infer(model, [inp], model_version=version)

    cases = [
        (dict(model="ghost"), "StatusCode.NOT_FOUND", "not served"),
        (dict(version="4"), "StatusCode.NOT_FOUND", "version"),
        (dict(datatype="INT8"), "StatusCode.INVALID_ARGUMENT", "datatype INT8 given"),
        (dict(shape=(1, 192, 192)), "StatusCode.INVALID_ARGUMENT", "shape"),
        (dict(shape=(1, 192, 192, -3)), "StatusCode.INVALID_ARGUMENT", "shape"),
        (dict(shape=(2**40, 192, 192, 3)), "StatusCode.INVALID_ARGUMENT", "max_rows"),
        (dict(shape=(17, 192, 192, 3)), "StatusCode.INVALID_ARGUMENT", "max_rows"),
        (dict(data=b"\0" * 12), "StatusCode.INVALID_ARGUMENT", "needs 442368 bytes"),
    ]
    for kwargs, code, fragment in cases:
        with pytest.raises(InferenceServerException) as e:
            infer(**kwargs)
        assert e.value.status() == code and fragment in e.value.message() and "\n" not in e.value.message(), kwargs
    assert grpc.is_server_ready()
    md, good = sample(node, "face-landmark", seed=1)
    inp = grpcclient.InferInput("input_1", list(good.shape), "FP32")
    inp.set_data_from_numpy(good)
    assert np.array_equal(grpc.infer("face-landmark", [inp]).as_numpy(md["outputs"][0]["name"]),
                          direct(node["blobs"]["face-landmark"], good)[0])


def test_health_states_ready_degraded_not_ready(node):
    url = node["url"]
    r = httpx.get(f"{url}/v2/health/ready")
    assert r.status_code == 200 and r.json()["state"] == "ready" and r.headers["x-pifarm-health"] == "ready"
    write_state(node["state"], NodeState(revision=3, degraded=True, degraded_reason="registry unreachable: refused"))
    try:
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 200 and r.json() == {"ready": True, "state": "degraded",
                                                    "reason": "registry unreachable: refused"}
        assert r.headers["x-pifarm-health"] == "degraded" and "unreachable" in r.headers["x-pifarm-health-reason"]
        assert node["http"].is_server_ready()
        from tritonclient.grpc import service_pb2

        _, call = node["grpc"]._client_stub.ServerReady.with_call(service_pb2.ServerReadyRequest())
        trailing = dict(call.trailing_metadata())
        assert trailing["x-pifarm-health"] == "degraded"
    finally:
        write_state(node["state"], NodeState(revision=3))
    node["http"].unload_model("hands", headers=AUTH)
    node["http"].unload_model("selfie", headers=AUTH)
    node["http"].unload_model("face-landmark", headers=AUTH)
    try:
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and r.json()["state"] == "not ready" and r.json()["reason"]
        assert not node["grpc"].is_server_ready()
        assert httpx.get(f"{url}/v2/health/live").status_code == 200 and node["grpc"].is_server_live()
    finally:
        for m in MODELS:
            node["http"].load_model(m, headers=AUTH)
    assert node["http"].is_server_ready()

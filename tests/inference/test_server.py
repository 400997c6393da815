"""The KServe V2 routes, /health, /metrics and every bad input, against a real loaded cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pifarm.appliance.demo import samplemodel as sm
from pifarm.cache.nodestate import NodeState, write_state
from pifarm.inference.server import create_app
from pifarm.inference.settings import InferenceSettings
from tests.inference.helpers import infer_body, make_cache
from tests.support.wait import wait_http

LIN = dict(in_features=16, out_features=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    tc = make_cache(root / "cache")
    tc.publish("lin", 1, sm.linear_model(16, 4, 1))
    tc.publish("nb", 3, sm.nobatch_model(8, 2))
    tc.publish("i64", 1, sm.add_model("int64", 4, 3))
    tc.publish("notes", 1, b"a raw file that shares the cache", fmt="raw")
    state = root / "state"
    write_state(state, NodeState(revision=7))
    app = create_app(InferenceSettings(max_body=64 * 1024), tc.root, state)
    with TestClient(app) as client:
        wait_http(client, "/health", lambda r: r.status_code == 200, what="all models loaded")
        yield client, state


def outputs(r) -> dict[str, np.ndarray]:
    assert r.status_code == 200, r.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


def test_server_metadata_and_liveness(served):
    c, _ = served
    assert c.get("/v2").json()["name"] == "pifarm"
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/lin", "/v2/models/lin/versions/1"])
def test_model_metadata(served, path):
    c, _ = served
    m = c.get(path).json()
    assert m["name"] == "lin" and m["versions"] == ["1"] and m["platform"] == "tensorflow_lite"
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("path", ["/v2/models/nb/ready", "/v2/models/nb/versions/3/ready"])
def test_model_ready(served, path):
    c, _ = served
    r = c.get(path)
    assert r.status_code == 200 and r.json() == {"name": "nb", "ready": True}


@pytest.mark.parametrize("path", ["/v2/models/lin/infer", "/v2/models/lin/versions/1/infer"])
def test_infer_batch_of_rows_matches_numpy(served, path):
    c, _ = served
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    body = infer_body("x", x)
    body["id"] = "req-1"
    r = c.post(path, json=body)
    assert r.json()["model_name"] == "lin" and r.json()["model_version"] == "1" and r.json()["id"] == "req-1"
    assert np.allclose(outputs(r)["y"], sm.expected("linear", x, 1, **LIN), atol=1e-5)


def test_infer_nobatch_and_int64(served):
    c, _ = served
    x = np.linspace(-2, 2, 8, dtype=np.float32)
    assert np.allclose(outputs(c.post("/v2/models/nb/infer", json=infer_body("x", x)))["y"],
                       sm.expected("nobatch", x, 2, length=8), atol=1e-6)
    xi = np.array([1, -2, 2**40, 5], dtype=np.int64)
    r = c.post("/v2/models/i64/infer", json=infer_body("x", xi, "INT64"))
    assert r.json()["outputs"][0]["datatype"] == "INT64"
    assert outputs(r)["y"].tolist() == sm.expected("add", xi, 3, length=4, dtype="int64").tolist()


def test_requested_outputs_filter(served):
    c, _ = served
    body = infer_body("x", np.ones((1, 16), np.float32))
    body["outputs"] = [{"name": "y"}]
    assert [o["name"] for o in c.post("/v2/models/lin/infer", json=body).json()["outputs"]] == ["y"]
    body["outputs"] = [{"name": "nope"}]
    r = c.post("/v2/models/lin/infer", json=body)
    assert r.status_code == 400 and "no output 'nope'" in r.json()["error"]


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (infer_body("x", np.ones((1, 15), np.float32)), 400, "shape [1, 15] given, model wants [-1, 16]"),
        (infer_body("x", np.ones((1, 16), np.int32), "INT32"), 400, "datatype INT32 given, model wants FP32"),
        ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 15}]}, 400,
         "needs 16 elements, data has 15"),
        ({"inputs": [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}, 400, "no input 'z'"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [{"name": "x", "shape": ["1", 16], "datatype": "FP32", "data": [0.0] * 16}]}, 400, "shape"),
        ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": ["a"] * 16}]}, 400, "numeric"),
        ({"input": []}, 400, "invalid request"),
    ],
)
def test_bad_inputs_get_one_line_400s(served, body, status, needle):
    c, _ = served
    r = c.post("/v2/models/lin/infer", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]


def test_non_json_body_is_400(served):
    c, _ = served
    r = c.post("/v2/models/lin/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "request body is not valid JSON"


@pytest.mark.parametrize("path", ["/v2/models/ghost", "/v2/models/ghost/ready", "/v2/models/lin/versions/2",
                                  "/v2/models/lin/versions/2/ready"])
def test_unknown_model_or_version_is_404(served, path):
    c, _ = served
    r = c.get(path)
    assert r.status_code == 404 and "not served here" in r.json()["error"]


@pytest.mark.parametrize("path", ["/v2/models/ghost/infer", "/v2/models/lin/versions/9/infer"])
def test_infer_on_unknown_model_or_version_is_404(served, path):
    c, _ = served
    r = c.post(path, json=infer_body("x", np.ones((1, 16), np.float32)))
    assert r.status_code == 404


def test_body_over_the_limit_is_413_before_parsing(served):
    c, _ = served
    big = infer_body("x", np.ones((2000, 16), np.float32))  # ~100 KB of JSON, limit is 64 KiB
    r = c.post("/v2/models/lin/infer", json=big)
    assert r.status_code == 413 and "max_body" in r.json()["error"]
    # A chunked upload without Content-Length is counted as it streams.
    data = json.dumps(big).encode()
    r = c.post("/v2/models/lin/infer", content=iter([data[i : i + 8192] for i in range(0, len(data), 8192)]),
               headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.post("/v2/models/lin/infer", json=infer_body("x", np.ones((1, 16), np.float32))).status_code == 200


def test_health_reports_models_revision_and_degraded_flag(served):
    c, state = served
    h = c.get("/health").json()
    assert h["ready"] and h["status"] == "ok" and h["revision"] == 7 and h["degraded"] is False
    assert h["models"]["lin"]["version"] == 1 and h["models"]["nb"]["version"] == 3
    assert h["models"]["nb"]["batching"]["batchable"] is False
    write_state(state, NodeState(revision=8, degraded=True, degraded_reason="registry unreachable"))
    try:
        r = c.get("/health")
        # Degraded nodes keep serving: still 200 for HAProxy, with the reason in the body.
        assert r.status_code == 200
        assert r.json()["degraded"] is True and r.json()["degraded_reason"] == "registry unreachable"
        assert r.json()["status"] == "degraded"
        assert "pifarm_inference_degraded 1.0" in c.get("/metrics").text
        assert c.post("/v2/models/nb/infer", json=infer_body("x", np.ones(8, np.float32))).status_code == 200
    finally:
        write_state(state, NodeState(revision=7))
    assert "pifarm_inference_degraded 0.0" in c.get("/metrics").text


def test_metrics_count_requests_errors_batches_and_versions(served):
    c, _ = served
    c.post("/v2/models/nb/infer", json=infer_body("x", np.ones(8, np.float32)))
    c.post("/v2/models/nb/infer", json=infer_body("x", np.ones(7, np.float32)))
    text = c.get("/metrics").text
    assert 'pifarm_inference_requests_total{model="nb",version="3"}' in text
    assert 'pifarm_inference_errors_total{code="400",model="nb"}' in text
    assert 'pifarm_inference_active_version{model="lin"} 1.0' in text
    assert 'pifarm_inference_request_seconds_count{model="nb"}' in text
    assert 'pifarm_inference_batch_size_bucket' in text
    assert 'pifarm_inference_model_load_seconds_count{model="lin"} 1.0' in text
    assert 'pifarm_inference_queue_depth{model="nb"}' in text


def test_openapi_lists_every_v2_route(served):
    c, _ = served
    paths = set(c.get("/openapi.json").json()["paths"])
    for p in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model}", "/v2/models/{model}/ready",
              "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}",
              "/v2/models/{model}/versions/{version}/ready", "/v2/models/{model}/versions/{version}/infer",
              "/health", "/metrics"):
        assert p in paths


def binary_request(c, path: str, header: dict, blobs: list[bytes]):
    head = json.dumps(header).encode()
    return c.post(path, content=head + b"".join(blobs),
                  headers={"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"})


def test_binary_tensor_extension_in_and_out(served):
    c, _ = served
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    header = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
              "parameters": {"binary_data_output": True}}
    r = binary_request(c, "/v2/models/lin/infer", header, [x.tobytes()])
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    out = doc["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 2 * 4 * 4 and "data" not in out
    y = np.frombuffer(r.content[n:], np.float32).reshape(out["shape"])
    assert np.allclose(y, sm.expected("linear", x, 1, **LIN), atol=1e-5)
    # binary in, JSON out
    del header["parameters"]
    r = binary_request(c, "/v2/models/lin/infer", header, [x.tobytes()])
    assert "inference-header-content-length" not in r.headers
    assert np.allclose(outputs(r)["y"], sm.expected("linear", x, 1, **LIN), atol=1e-5)


@pytest.mark.parametrize(
    "size,blob,header_len,needle",
    [
        (64, b"\0" * 60, None, "runs past the end"),
        (60, b"\0" * 60, None, "needs 64 bytes, binary data has 60"),
        (64, b"\0" * 68, None, "4 bytes of binary data are not claimed"),
        (64, b"\0" * 64, "99999", "does not fit"),
    ],
)
def test_malformed_binary_requests_are_400(served, size, blob, header_len, needle):
    c, _ = served
    header = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}
    head = json.dumps(header).encode()
    r = c.post("/v2/models/lin/infer", content=head + blob,
               headers={"inference-header-content-length": header_len or str(len(head))})
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_calibration_reaches_the_live_pool(served):
    from pifarm.inference.model import PENDING

    c, _ = served
    h = wait_http(c, "/health", lambda r: r.json()["models"]["lin"]["batching"]["reason"] != PENDING,
                 what="calibration of lin").json()
    lin = h["models"]["lin"]["batching"]
    assert lin["batchable"] is True
    pool = c.app.state.manager.get("lin").pool
    assert pool.policy.enabled == lin["enabled"]


def test_non_model_files_in_the_cache_are_left_out_not_waited_for(served):
    c, _ = served
    h = c.get("/health")
    assert h.status_code == 200 and "notes" not in h.json()["models"]
    assert "format 'raw'" in h.json()["ignored"]["notes"]
    r = c.get("/v2/models/notes")
    assert r.status_code == 404 and "format 'raw'" in r.json()["error"]

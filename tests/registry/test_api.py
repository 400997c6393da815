"""The HTTP API in-process (TestClient runs the real app and its lifespan): auth, limits, Range,
errors, health providers, metrics. Long-poll against a real uvicorn lives in test_longpoll.py."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from pifarm.registry.api import create_app, parse_range
from pifarm.signed.integrity import digest_bytes
from pifarm.registry.service import Registry
from pifarm.registry.settings import ApiSettings
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_manifest, verify_snapshot

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def reg(tmp_path):
    r = Registry.open(tmp_path / "agg")
    yield r
    r.close()


@pytest.fixture
def client(reg):
    app = create_app(reg, ApiSettings(max_upload=1 << 20, wait_default=1), token=TOKEN,
                     health_providers=[lambda: {"drives": {"nvme0": "ok"}}])
    with TestClient(app) as c:
        yield c


def upload(client, data: bytes, headers=AUTH):
    return client.put(f"/v1/blobs/{digest_bytes(data)}", params={"size": len(data)}, content=data, headers=headers)


def test_writes_need_the_bearer_token(client):
    assert upload(client, b"x", headers={}).status_code == 401
    r = upload(client, b"x", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "not valid" in r.json()["error"]
    assert client.post("/v1/models/m/channels/stable", json={"version": 1}).status_code == 401
    assert client.post("/v1/models/m/versions/1/retire", headers={"Authorization": "Basic abc"}).status_code == 401
    assert upload(client, b"x").status_code == 201


def test_two_step_publish_promote_rollback_retire_over_http(client, reg):
    keys = TrustedKeys.from_files([reg.pubkey_path])
    files = []
    for path, data in (("model.bin", b"weights-1"), ("labels.txt", b"cat")):
        assert upload(client, data).status_code == 201
        files.append({"path": path, "size": len(data), "digest": digest_bytes(data)})
    r = client.post("/v1/models/m/versions", json={"files": files, "channel": "stable"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    doc = client.get("/v1/models/m/versions/1").json()
    assert verify_manifest(doc, keys).files[0].path == "labels.txt"
    upload(client, b"weights-2")
    files[0] = {"path": "model.bin", "size": 9, "digest": digest_bytes(b"weights-2")}
    assert client.post("/v1/models/m/versions", json={"files": files}, headers=AUTH).json()["version"] == 2
    assert client.post("/v1/models/m/channels/stable", json={"version": 2}, headers=AUTH).status_code == 200
    r = client.post("/v1/models/m/channels/stable/rollback", headers=AUTH)
    assert r.json()["version"] == 1
    assert client.post("/v1/models/m/versions/2/retire", headers=AUTH).json()["retired"] is True
    m = client.get("/v1/models/m").json()
    assert m["channels"] == {"stable": 1} and [v["version"] for v in m["versions"]] == [1]
    snap = verify_snapshot(client.get("/v1/metadata").json(), keys)
    assert snap.revision == 5 and [p.version for p in snap.models["m"].versions] == [1]


def test_single_request_upload_publishes_a_real_tflite(client, face_model):
    r = client.post("/v1/models/face/upload", params={"path": "face.tflite", "channel": "canary"},
                    content=face_model.read_bytes(), headers=AUTH)
    assert r.status_code == 201, r.text
    signed = r.json()["document"]["signed"]
    assert signed["format"] == "tflite" and signed["tensors"]["inputs"][0]["shape"] == [1, 128, 128, 3]


def test_oversized_upload_is_refused_with_413_and_leaves_nothing(client, reg):
    big = b"\0" * ((1 << 20) + 1)
    r = upload(client, big)
    assert r.status_code == 413 and "max_upload" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(3):
            yield b"\1" * (1 << 19)

    r = client.post("/v1/models/m/upload", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert reg.store.list_blobs() == [] and list((reg.data_dir / "tmp").iterdir()) == []


def test_upload_whose_bytes_do_not_match_the_digest_is_refused(client, reg):
    r = client.put(f"/v1/blobs/{digest_bytes(b'promised')}", params={"size": 8}, content=b"tampered", headers=AUTH)
    assert r.status_code == 400 and "hashes to" in r.json()["error"]
    assert reg.store.list_blobs() == []


def test_blob_range_etag_and_head(client):
    data = bytes(range(256)) * 40
    upload(client, data)
    d = digest_bytes(data)
    r = client.get(f"/v1/blobs/{d}")
    assert r.status_code == 200 and r.content == data and r.headers["etag"] == f'"{d}"'
    r = client.get(f"/v1/blobs/{d}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(f"/v1/blobs/{d}", headers={"Range": "bytes=-10"}).content == data[-10:]
    assert client.get(f"/v1/blobs/{d}", headers={"Range": "bytes=10000-"}).content == data[10000:]
    assert client.get(f"/v1/blobs/{d}", headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    r = client.head(f"/v1/blobs/{d}")
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)
    assert client.get(f"/v1/blobs/{digest_bytes(b'none')}").status_code == 404
    assert client.get("/v1/blobs/sha256:abc").status_code == 400


@pytest.mark.parametrize("header,size,expect", [
    ("bytes=0-0", 10, (0, 1)), ("bytes=5-", 10, (5, 10)), ("bytes=-3", 10, (7, 10)), ("bytes=2-100", 10, (2, 10)),
    ("bytes=0-1,4-5", 10, None), ("items=0-1", 10, None), (None, 10, None), ("bytes=5-2", 10, None),
])
def test_parse_range(header, size, expect):
    assert parse_range(header, size) == expect


def test_unknown_model_version_and_bad_requests_are_clear(client):
    r = client.get("/v1/models/ghost")
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    assert client.get("/v1/models/ghost/versions/1").status_code == 404
    assert client.get("/v1/models/BAD/versions/1").status_code == 400
    r = client.post("/v1/models/ghost/channels/stable", json={"version": 3}, headers=AUTH)
    assert r.status_code == 404
    r = client.post("/v1/models/m/versions", json={"files": [{"path": "../x", "size": 1, "digest": digest_bytes(b"x")}]},
                    headers=AUTH)
    assert r.status_code == 400 and "relative paths only" in r.json()["error"]
    r = client.post("/v1/models/m/versions", json={"files": "nope"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"].startswith("bad request")
    assert client.get("/v1/metadata", params={"since": "abc"}).status_code == 422


def test_metadata_304_on_timeout_and_reset_when_ahead(client, reg):
    r = client.get("/v1/metadata", params={"since": 0, "wait": 0.2})
    assert r.status_code == 304 and r.headers["x-pifarm-revision"] == "0"
    r = client.get("/v1/metadata", params={"since": 41, "wait": 30})
    assert r.status_code == 200 and r.headers["x-pifarm-reset"] == "1"
    assert json.loads(r.content)["signed"]["revision"] == 0
    r = client.get("/v1/metadata", params={"since": -1})
    assert r.status_code == 200 and r.headers["etag"] == '"r0"' and "x-pifarm-reset" not in r.headers


def test_health_merges_providers_and_metrics_are_prometheus(client, reg):
    h = client.get("/health").json()
    assert h["drives"] == {"nvme0": "ok"} and h["read_only"] is False and h["store"]["reachable"] is True
    text = client.get("/metrics").text
    assert "pifarm_registry_revision 0.0" in text and "pifarm_metadata_waiters" in text
    spec = client.get("/openapi.json").json()
    assert "/v1/metadata" in spec["paths"] and "/v1/blobs/{digest}" in spec["paths"]


def test_health_reports_read_only_with_reason(tmp_path):
    r = Registry.open(tmp_path / "agg")
    try:
        root = r.store.root
        root.rename(tmp_path / "away")
        root.write_text("x")
        r.check_store()
        with TestClient(create_app(r, ApiSettings(), token=TOKEN, metrics_registry=CollectorRegistry())) as c:
            h = c.get("/health").json()
            assert h["read_only"] is True and "unreachable" in h["read_only_reason"] and h["status"] == "degraded"
            resp = upload(c, b"x")
            assert resp.status_code == 503 and "read-only" in resp.json()["error"]
            assert c.get("/v1/metadata").status_code == 200
    finally:
        r.close()


def test_no_token_configured_refuses_every_write(reg):
    with TestClient(create_app(reg, ApiSettings())) as c:
        assert upload(c, b"x", headers={"Authorization": "Bearer "}).status_code == 401
        assert upload(c, b"x", headers={"Authorization": "Bearer anything"}).status_code == 403


def test_metadata_fast_path_and_route_give_the_same_answers(client, reg, face_model):
    """Well-formed long-polls skip the framework; anything else reaches the route: same rules."""
    reg.publish(face_model, "face")
    for query in ({"since": 0}, {"since": 5, "wait": 30}, {"since": 1, "wait": 0.1}, {}):
        fast = client.get("/v1/metadata", params=query)
        slow = client.get("/v1/metadata", params={**query, "via": "route"})  # unknown key: falls through
        assert fast.status_code == slow.status_code
        assert fast.content == slow.content
        for h in ("x-pifarm-revision", "etag", "x-pifarm-reset", "content-type"):
            assert fast.headers.get(h) == slow.headers.get(h), h
    assert client.get("/v1/metadata", params={"since": -5}).status_code == 422
    assert client.get("/v1/metadata", params={"wait": "nan"}).status_code == 422

"""The real aggregator daemon: starts on an empty data dir, serves, restarts on the same port."""

import os
import stat

import httpx

from pifarm.registry.signing import TrustedKeys
from pifarm.registry.snapshot import verify_snapshot

MODEL = "/work/shared/models/face_detection_short_range.tflite"


def test_empty_data_dir_creates_keys_token_and_serves(aggregator):
    d = aggregator.data_dir
    assert stat.S_IMODE(os.stat(d / "keys" / "signing.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "api-token").st_mode) == 0o600
    assert (d / "registry.db").exists()
    h = httpx.get(aggregator.url + "/health").json()
    assert h["read_only"] is False and h["revision"] == 0
    doc = httpx.get(aggregator.url + "/v1/metadata").json()
    snap = verify_snapshot(doc, TrustedKeys.from_files([aggregator.pubkey]))
    assert snap.revision == 0 and snap.models == {}


def test_publish_survives_restart_on_same_port(aggregator, tmp_path):
    with aggregator.client() as c:
        out = c.publish(MODEL, "face", channel="stable")
    assert out["version"] == 1
    port = aggregator.port
    assert aggregator.stop() == 0
    aggregator.start()
    assert aggregator.port == port
    with aggregator.client() as c:
        models = c.models()
    assert models["face"]["channels"] == {"stable": 1}

"""The real aggregator daemon: starts on an empty data dir, serves, restarts on the same port."""

import os
import stat

import httpx

from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_snapshot


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


def test_publish_survives_restart_on_same_port(aggregator, face_model):
    with aggregator.client() as c:
        out = c.publish(str(face_model), "face", channel="stable")
    assert out["version"] == 1
    port = aggregator.port
    assert aggregator.stop() == 0
    aggregator.start()
    assert aggregator.port == port
    with aggregator.client() as c:
        models = c.models()
    assert models["face"]["channels"] == {"stable": 1}


def test_port_in_use_exits_1_with_the_reason(tmp_path):
    import socket
    import subprocess
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "pifarm", "aggregator", "run", "--data-dir", str(tmp_path / "d"),
                            "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    finally:
        s.close()
    assert p.returncode == 1 and "cannot listen on" in p.stderr and "address already in use" in p.stderr.lower()
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_stopping_answers_parked_long_polls_with_a_reason_not_a_500(aggregator):
    """A node's parked long-poll must learn why the aggregator went away (503 + Retry-After and
    a message), not get a bare 500 from the server cancelling it at its shutdown timeout."""
    import threading

    rev = int(httpx.get(aggregator.url + "/v1/metadata").headers["X-Pifarm-Revision"])
    got: dict = {}

    def park() -> None:
        try:
            got["r"] = httpx.get(aggregator.url + "/v1/metadata", params={"since": rev, "wait": 60}, timeout=30)
        except httpx.HTTPError as e:  # pragma: no cover - reported by the assertion below
            got["e"] = e

    t = threading.Thread(target=park)
    t.start()
    import time

    for _ in range(100):  # bounded: until the request is parked (the waiters gauge says so)
        if "pifarm_metadata_waiters 1.0" in httpx.get(aggregator.url + "/metrics").text:
            break
        time.sleep(0.05)
    aggregator.stop()
    t.join(timeout=30)
    assert "r" in got, got
    assert got["r"].status_code == 503
    assert got["r"].headers["Retry-After"] == "1"
    assert "shutting down" in got["r"].json()["error"]

"""S3 pulls against a REAL SeaweedFS: ranged parts, resume after an outage (R2), `pifarm pull
--registry s3://…`, and the node's S3 snapshot fallback then degraded mode (R3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pifarm.cache.nodestate import read_state
from pifarm.cache.store import Cache
from pifarm.errors import SourceError
from pifarm.initiator.s3_source import S3Documents, S3Source
from pifarm.initiator.settings import S3Settings
from pifarm.signed.integrity import BlobRef, digest_bytes, digest_hex
from tests.support.procs import pifarm, stop_process
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.s3


@pytest.fixture
def reader_env(seaweed, monkeypatch):
    env = {"AWS_ACCESS_KEY_ID": seaweed.reader_key, "AWS_SECRET_ACCESS_KEY": seaweed.reader_secret,
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def put_blob(seaweed, bucket: str, prefix: str, data: bytes) -> BlobRef:
    c = seaweed.client()
    try:
        c.create_bucket(Bucket=bucket)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass
    ref = BlobRef(digest_bytes(data), len(data))
    c.put_object(Bucket=bucket, Key=f"{prefix}blobs/blake3/{digest_hex(ref.digest)}", Body=data)
    return ref


def test_ranged_concurrent_pull_and_resume(seaweed, s3_bucket, reader_env, tmp_path):
    data = os.urandom(5 * 2**20 + 1234)
    ref = put_blob(seaweed, s3_bucket, "farm/", data)
    s = S3Settings(url=f"s3://{s3_bucket}/farm", endpoint_url=seaweed.endpoint, part_size=2**20, concurrency=3)
    src = S3Source(s)
    tail = b"".join(bytes(c) for c in src.chunks(ref, 3_000_000))
    assert tail == data[3_000_000:] and src.received == len(data) - 3_000_000
    cache = Cache(tmp_path / "c")
    res = cache.install(ref, [S3Source(s)])
    assert res.source == "s3" and res.path.read_bytes() == data
    missing = BlobRef(digest_bytes(b"nope"), 4)
    with pytest.raises(SourceError, match="not in the bucket"):
        list(S3Source(s).chunks(missing))


def test_wrong_credentials_are_a_clear_source_error(seaweed, s3_bucket, monkeypatch):
    put_blob(seaweed, s3_bucket, "", b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "WRONGKEY0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrongsecret")
    store = S3Documents(S3Settings(url=f"s3://{s3_bucket}", endpoint_url=seaweed.endpoint))
    with pytest.raises(SourceError, match="access denied"):
        store.snapshot()


@pytest.mark.slow
def test_r2_outage_mid_pull_resumes_and_refetches_at_most_one_part(seaweed, s3_bucket, reader_env, tmp_path):
    part = 2**20
    data = os.urandom(48 * part)
    ref = put_blob(seaweed, s3_bucket, "", data)
    s = S3Settings(url=f"s3://{s3_bucket}", endpoint_url=seaweed.endpoint, part_size=part, concurrency=4,
                   connect_timeout=1.0, read_timeout=5.0)
    src = S3Source(s, deadline=120)
    cache = Cache(tmp_path / "c")
    failures: list[str] = []
    result: list = []

    def pull() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                result.append(cache.install(ref, [src]))
                return
            except SourceError as e:
                failures.append(str(e))
                time.sleep(0.2)

    # throttle the consumer so the outage lands mid-pull: slow progress callback
    orig = cache.install

    def slow_install(r, sources, progress=None):
        return orig(r, sources, progress=lambda n, name: time.sleep(0.02))

    cache.install = slow_install  # type: ignore[method-assign]
    t = threading.Thread(target=pull, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while src.received < 12 * part and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src.received >= 12 * part and not result
    seaweed.stop()
    deadline = time.monotonic() + 30
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures, "the pull should have noticed the outage"
    seaweed.start()
    t.join(timeout=150)
    assert result and result[0].path.read_bytes() == data
    assert src.received - len(data) <= part, f"re-downloaded {src.received - len(data)} bytes"




def s3_aggregator(aggregator_factory, seaweed, bucket: str, tmp_path: Path, name: str = "agg"):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f"""
[store]
url = "s3://{bucket}/farm"
endpoint_url = "{seaweed.endpoint}"
region = "us-east-1"
access_key_id = "{seaweed.access_key}"
secret_access_key = "{seaweed.secret_key}"
check_interval = 1.0
""")
    return aggregator_factory(name, config=cfg)


def test_pull_cli_from_seaweedfs_alone(aggregator_factory, seaweed, s3_bucket, reader_env, tmp_path):
    agg = s3_aggregator(aggregator_factory, seaweed, s3_bucket, tmp_path)
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(3 * 2**20))
    with agg.client() as c:
        c.publish(f, "s3model", "stable", format="raw")
    agg.stop()  # S3 alone must be enough
    r = pifarm("pull", "s3model", "--registry", f"s3://{s3_bucket}/farm", "--endpoint-url", seaweed.endpoint,
               "--cache", str(tmp_path / "cache"), "--trust", str(agg.pubkey), env=reader_env)
    assert r.returncode == 0, r.stderr
    assert "pulled s3model v1" in r.stdout and "via s3" in r.stdout
    assert pifarm("cache", "verify", "--cache", str(tmp_path / "cache")).returncode == 0


def wait_state(state: Path, cond, timeout: float) -> bool:
    return eventually(lambda: (st := read_state(state)) is not None and cond(st), timeout)


@pytest.mark.slow
def test_r3_aggregator_then_s3_down_degrades_within_5s_and_recovers(aggregator_factory, seaweed, s3_bucket,
                                                                     reader_env, tmp_path):
    agg = s3_aggregator(aggregator_factory, seaweed, s3_bucket, tmp_path)
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(500_000))
    with agg.client() as c:
        c.publish(f, "r3", "stable", format="raw")
    cache, state = tmp_path / "cache", tmp_path / "state"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
[node]
trusted_keys = ["{agg.pubkey}"]
[s3]
url = "s3://{s3_bucket}/farm"
endpoint_url = "{seaweed.endpoint}"
connect_timeout = 1.0
[watcher]
poll_wait = 5
connect_timeout = 1.0
backoff_base = 0.2
backoff_max = 1.0
s3_poll_interval = 1.0
[cache]
scrub_interval = 0.0
""")
    node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", agg.url, "--config",
                             str(cfg), "--cache", str(cache), "--state-dir", str(state), "--no-serve"],
                            cwd=ROOT, env={**os.environ, **reader_env}, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "node.log", "wb"))
    def log() -> str:
        import signal
        node.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        return (tmp_path / "node.log").read_text()[-6000:]

    try:
        assert wait_state(state, lambda s: s.models.get("r3", {}).get("version") == 1 and s.live_path == "http", 60), log()
        agg.stop()
        assert wait_state(state, lambda s: s.live_path == "s3" and s.paths["http"] == "unreachable", 20), log()
        assert not read_state(state).degraded
        seaweed.stop()
        t0 = time.monotonic()
        assert wait_state(state, lambda s: s.degraded, 5.0), log()
        st = read_state(state)
        assert time.monotonic() - t0 <= 5.0
        assert "http:" in st.degraded_reason and "s3:" in st.degraded_reason and st.degraded_since
        assert st.models["r3"]["version"] == 1
        assert Cache(cache, recover=False).layout.read_ref("r3", "active").version == 1
        r = pifarm("status", "--state-dir", str(state))
        assert r.returncode == 0 and "DEGRADED since" in r.stdout
        seaweed.start()
        assert wait_state(state, lambda s: not s.degraded and s.live_path == "s3", 30), log()
        agg.start()
        assert wait_state(state, lambda s: s.live_path == "http" and s.paths["http"] == "live", 30), log()
        st = json.loads(pifarm("status", "--state-dir", str(state), "--json").stdout)
        assert st["degraded"] is False and st["models"]["r3"]["version"] == 1
    finally:
        if seaweed._proc is None:
            seaweed.start()
        stop_process(node)

"""Node config (node.toml < env < CLI, [[sources]]) and the daemon's self-repair."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifarm.appliance.config import NodeConfig, load_node_config
from pifarm.appliance.node import NodeDaemon
from pifarm.cache.settings import CacheSettings
from pifarm.errors import ConfigError
from pifarm.initiator.settings import HttpOptions, NodeSettings, S3Options, SourceSpec, WatcherSettings
from pifarm.signed.integrity import digest_bytes
from pifarm.signed.signing import SigningKey, public_pem
from tests.cache.helpers import manifest_doc, snapshot_doc
from tests.initiator.docserver import DocServer

ROOT = Path(__file__).resolve().parents[2]


def test_node_toml_env_and_cli_precedence(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("""
[node]
aggregator = "http://127.0.0.1:9000"
channel = "canary"
models = ["a", "b"]
[cache]
root = "/tmp/x"
max_bytes = "8GiB"
[s3]
url = "s3://bucket/farm"
part_size = "16MiB"
[[sources]]
kind = "http"
deadline = 10
[[sources]]
kind = "s3"
deadline = 300
options = {concurrency = 8}
""")
    c = load_node_config(cfg, environ={"PIFARM_CACHE_MAX_BYTES": "1GiB"}, overrides={"cache": {"root": "/tmp/y"}})
    assert c.node.channel == "canary" and c.node.models == ["a", "b"]
    assert c.cache.max_bytes == 2**30 and c.cache.root == "/tmp/y"
    assert c.s3.part_size == 16 * 2**20 and c.s3.bucket == "bucket" and c.s3.prefix == "farm/"
    assert c.sources == (SourceSpec("http", 10, options=HttpOptions()), SourceSpec("s3", 300, options=S3Options(concurrency=8)))


@pytest.mark.parametrize("text, message", [
    ("[node]\nchannel = \"beta\"\n", "channel must be one of stable, canary"),
    ("[cache]\nmax_bytes = \"lots\"\n", "[cache] max_bytes must be"),
    ("[cache]\nsize = 1\n", "unknown key [cache] size"),
    ("[nodes]\n", "unknown section [nodes]"),
    ("[[sources]]\ndeadline = 3\n", "needs kind"),
    ("[[sources]]\nkind = \"http\"\nspeed = 3\n", "unknown key speed"),
    ("[s3]\nurl = \"http://not-s3\"\n", "s3://bucket/prefix"),
    ("[watcher]\npoll_wait = 900\n", "poll_wait must be 0..300"),
])
def test_bad_node_config_is_one_clear_error(tmp_path, text, message):
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        load_node_config(cfg, environ={})
    assert message in str(e.value) and str(cfg) in str(e.value)


def test_cli_bad_config_exits_2(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[cache]\nmax_bytes = true\n")
    r = subprocess.run([sys.executable, "-m", "pifarm", "cache", "ls", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "max_bytes" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pifarm", "status", "--state-dir", str(tmp_path / "none")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no node state" in r.stderr


@pytest.mark.parametrize("catcher", ["tamper-watch", "scrub"])
def test_daemon_refetches_a_damaged_active_blob(tmp_path, catcher):
    key = SigningKey.generate()
    pub = tmp_path / "signing.pub"
    pub.write_bytes(public_pem(key.public))
    data = os.urandom(200_000)
    m = manifest_doc(key, "t", 1, {"model.bin": data})
    srv = DocServer()
    srv.manifests[("t", 1)] = m
    srv.blobs[digest_bytes(data)] = data
    srv.snapshot = snapshot_doc(key, 1, {"t": {"stable": m}})
    cfg = NodeConfig(
        node=NodeSettings(aggregator=srv.url, trusted_keys=[str(pub)], state_dir=str(tmp_path / "state")),
        cache=CacheSettings(root=str(tmp_path / "cache"), tamper_watch=catcher == "tamper-watch",
                            scrub_interval=0.3 if catcher == "scrub" else 0, scrub_rate=None),
        watcher=WatcherSettings(poll_wait=1, backoff_base=0.05, backoff_max=0.5),
    )
    daemon = NodeDaemon(cfg)
    daemon.start()
    try:
        cache = daemon.cache
        end = time.monotonic() + 20
        while cache.layout.read_ref("t", "active") is None and time.monotonic() < end:
            time.sleep(0.05)
        p = cache.layout.blob(digest_bytes(data))
        fetched = daemon.sources[0].inner.received
        os.chmod(p, 0o644)
        with open(p, "r+b") as f:
            f.write(b"evil")
        end = time.monotonic() + 20
        while daemon.sources[0].inner.received < fetched + len(data) and time.monotonic() < end:
            time.sleep(0.05)
        end = time.monotonic() + 5
        while not (p.exists() and p.read_bytes() == data) and time.monotonic() < end:
            time.sleep(0.05)
        assert p.read_bytes() == data
        counter = daemon.metrics.tampered if catcher == "tamper-watch" else daemon.metrics.scrub_damaged
        assert counter._value.get() == 1
    finally:
        daemon.stop()
        srv.stop()


def test_daemon_metrics_show_source_and_degraded(tmp_path):
    import httpx

    from tests.support.procs import free_port

    key = SigningKey.generate()
    pub = tmp_path / "signing.pub"
    pub.write_bytes(public_pem(key.public))
    m = manifest_doc(key, "met", 1, {"f": b"m" * 1000})
    srv = DocServer()
    srv.manifests[("met", 1)] = m
    srv.blobs[digest_bytes(b"m" * 1000)] = b"m" * 1000
    srv.snapshot = snapshot_doc(key, 1, {"met": {"stable": m}})
    port = free_port()
    cfg = NodeConfig(
        node=NodeSettings(aggregator=srv.url, trusted_keys=[str(pub)], state_dir=str(tmp_path / "state"),
                          metrics_listen=f"127.0.0.1:{port}"),
        cache=CacheSettings(root=str(tmp_path / "cache"), scrub_interval=0),
        watcher=WatcherSettings(poll_wait=1, backoff_base=0.05, backoff_max=0.3),
    )
    daemon = NodeDaemon(cfg)
    daemon.start()
    try:
        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

        end = time.monotonic() + 20
        while 'pifarm_cache_blobs_installed_total{source="http"} 1.0' not in scrape() and time.monotonic() < end:
            time.sleep(0.1)
        assert 'pifarm_cache_blobs_installed_total{source="http"} 1.0' in scrape()
        assert "pifarm_node_degraded 0.0" in scrape()
        srv.stop()
        end = time.monotonic() + 10
        while "pifarm_node_degraded 1.0" not in scrape() and time.monotonic() < end:
            time.sleep(0.1)
        assert "pifarm_node_degraded 1.0" in scrape()
    finally:
        daemon.stop()

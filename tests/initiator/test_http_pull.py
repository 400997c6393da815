"""`pifarm pull` and the HTTP source against the REAL aggregator (filesystem store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pifarm.cache.store import Cache
from pifarm.errors import SourceError
from pifarm.initiator.http_source import HttpSource
from pifarm.signed.integrity import BlobRef, digest_file
from tests.cache.helpers import MemSource, blob
from tests.initiator.docserver import DocServer
from tests.support.procs import pifarm


def publish(agg, path: Path, name: str, channel: str = "stable") -> dict:
    with agg.client() as c:
        return c.publish(path, name, channel, format="raw")


def test_http_source_streams_and_resumes_with_range(aggregator, tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(3 * 2**20 + 17))
    publish(aggregator, f, "rangey")
    digest, size = digest_file(f)
    src = HttpSource(aggregator.url)
    assert b"".join(src.chunks(BlobRef(digest, size), 1_000_000)) == f.read_bytes()[1_000_000:]
    assert src.received == size - 1_000_000
    with pytest.raises(SourceError, match="404"):
        list(src.chunks(BlobRef("blake3:" + "0" * 64, 10)))


def test_pull_cli_against_real_aggregator(aggregator, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(1_500_000))
    publish(aggregator, f, "pullme")
    cache = tmp_path / "cache"
    base = ["--registry", aggregator.url, "--cache", str(cache), "--trust", str(aggregator.pubkey)]
    r = pifarm("pull", "pullme:stable", *base)
    assert r.returncode == 0, r.stderr
    assert "pulled pullme v1" in r.stdout and "via http" in r.stdout
    digest, _ = digest_file(f)
    assert (cache / "blobs" / "blake3" / digest.split(":")[1]).read_bytes() == f.read_bytes()
    r = pifarm("cache", "ls", "--cache", str(cache), "--json")
    assert '"active": 1' in r.stdout
    r = pifarm("cache", "verify", "--cache", str(cache))
    assert r.returncode == 0 and "all verified" in r.stdout
    # bad input: unknown version, unknown model, malformed spec, untrusted key
    r = pifarm("pull", "pullme@9", *base)
    assert r.returncode == 1 and "has no version 9" in r.stderr
    r = pifarm("pull", "nosuch", *base)
    assert r.returncode == 1 and "not in the registry" in r.stderr
    r = pifarm("pull", "Bad:Name", *base)
    assert r.returncode == 2 and "cannot parse" in r.stderr
    other = tmp_path / "other.pub"
    from pifarm.signed.signing import SigningKey, public_pem

    other.write_bytes(public_pem(SigningKey.generate().public))
    r = pifarm("pull", "pullme", "--registry", aggregator.url, "--cache", str(tmp_path / "c2"), "--trust", str(other))
    assert r.returncode == 1 and "signed by unknown key" in r.stderr


def test_cache_verify_exits_1_on_damage(aggregator, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(200_000))
    publish(aggregator, f, "dmg")
    cache = tmp_path / "cache"
    assert pifarm("pull", "dmg", "--registry", aggregator.url, "--cache", str(cache), "--trust",
                  str(aggregator.pubkey), "-q").returncode == 0
    p = next((cache / "blobs" / "blake3").iterdir())
    os.chmod(p, 0o644)
    with open(p, "r+b") as fh:
        fh.write(b"\0\0\0")
    r = pifarm("cache", "verify", "--cache", str(cache))
    assert r.returncode == 1 and "1 of 1 blobs damaged" in r.stderr
    r = pifarm("pull", "dmg", "--registry", aggregator.url, "--cache", str(cache), "--trust", str(aggregator.pubkey))
    assert r.returncode == 0 and "via http" in r.stdout  # re-fetched
    assert pifarm("cache", "verify", "--cache", str(cache)).returncode == 0


def test_bit_flipped_http_blob_falls_back_to_next_source(tmp_path):
    data = os.urandom(400_000)
    ref = blob(data)
    srv = DocServer()
    try:
        srv.blobs[ref.digest] = data
        srv.flip_bit = True
        cache = Cache(tmp_path / "c")
        res = cache.install(ref, [HttpSource(srv.url), MemSource({ref.digest: data}, "s3")])
        assert res.source == "s3" and res.path.read_bytes() == data
        assert cache.metrics.rejected.labels("http")._value.get() == 1
        assert os.listdir(cache.layout.tmp) == []
    finally:
        srv.stop()


def test_cache_rollback_and_gc_cli(aggregator, tmp_path):
    blobs = []
    for i in range(3):
        f = tmp_path / f"v{i}.bin"
        f.write_bytes(os.urandom(100_000))
        publish(aggregator, f, "gcm")
        blobs.append(digest_file(f)[0].split(":")[1])
    cache = tmp_path / "cache"
    base = ["--registry", aggregator.url, "--cache", str(cache), "--trust", str(aggregator.pubkey), "-q"]
    for v in (1, 2, 3):
        assert pifarm("pull", f"gcm@{v}", *base).returncode == 0
    r = pifarm("cache", "gc", "--cache", str(cache))
    assert r.returncode == 0 and r.stdout.startswith("removed 1 blobs")
    assert sorted(os.listdir(cache / "blobs" / "blake3")) == sorted(blobs[1:])
    r = pifarm("cache", "rollback", "gcm", "--cache", str(cache))
    assert r.returncode == 0 and "v2 active again" in r.stdout
    c = Cache(cache)
    assert c.layout.read_ref("gcm", "active").version == 2 and c.layout.read_ref("gcm", "previous").version == 3
    r = pifarm("cache", "rollback", "nosuch", "--cache", str(cache))
    assert r.returncode == 1 and "has no previous version" in r.stderr


def test_pull_refuses_snapshot_older_than_node_has_seen(aggregator, tmp_path):
    from pifarm.cache.nodestate import NodeState, write_state

    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(1000))
    publish(aggregator, f, "old")
    write_state(tmp_path / "state", NodeState(revision=99))
    r = pifarm("pull", "old", "--registry", aggregator.url, "--cache", str(tmp_path / "c"), "--trust",
               str(aggregator.pubkey), env={"PIFARM_NODE_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 1 and "older than revision 99" in r.stderr and "rollback refused" in r.stderr

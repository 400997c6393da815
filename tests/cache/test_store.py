"""The cache's install, refs, recovery, budget and maintenance (real files in tmp_path)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pifarm.cache.budget import BudgetExceeded
from pifarm.cache.layout import RefValue
from pifarm.cache.store import Cache
from pifarm.errors import Conflict, IntegrityError, SourceError, UsageError
from pifarm.signed.manifest import manifest_digest
from pifarm.signed.signing import SigningKey, TrustedKeys
from tests.cache.helpers import MemSource, blob, manifest_doc
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def listing(p: Path) -> list[str]:
    return sorted(x.name for x in p.iterdir())


def test_install_verifies_and_makes_blob_read_only(tmp_path):
    data = os.urandom(300_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    res = cache.install(ref, [MemSource({ref.digest: data})])
    assert res.source == "mem" and res.fetched == len(data)
    assert res.path.read_bytes() == data
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o444
    assert listing(cache.layout.tmp) == []
    again = cache.install(ref, [])
    assert again.source == "cache" and again.fetched == 0


def test_bit_flipped_blob_is_rejected_and_next_source_used(tmp_path):
    data = os.urandom(200_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    bad, good = MemSource({ref.digest: data}, "evil", corrupt=True), MemSource({ref.digest: data}, "good")
    res = cache.install(ref, [bad, good])
    assert res.source == "good"
    assert cache.metrics.rejected.labels("evil")._value.get() == 1
    assert res.path.read_bytes() == data


def test_bit_flipped_blob_from_only_source_installs_nothing(tmp_path):
    data = os.urandom(100_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    with pytest.raises(SourceError, match="evil: .*content hashes to"):
        cache.install(ref, [MemSource({ref.digest: data}, "evil", corrupt=True)])
    assert listing(cache.layout.blobs) == [] and listing(cache.layout.tmp) == []


def test_oversized_source_is_cut_off(tmp_path):
    data = os.urandom(10_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    longer = MemSource({ref.digest: data + b"x" * 100_000}, "long")
    with pytest.raises(SourceError, match="more than the 10000 bytes"):
        cache.install(ref, [longer])
    assert listing(cache.layout.blobs) == [] and listing(cache.layout.tmp) == []


def test_interrupted_pull_resumes_from_partial(tmp_path):
    data = os.urandom(1_000_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    flaky = MemSource({ref.digest: data}, "flaky", fail_at=600_000)
    with pytest.raises(SourceError, match="connection reset"):
        cache.install(ref, [flaky])
    partial = cache.layout.tmp / f"{ref.hex}.partial"
    assert partial.stat().st_size >= 500_000
    # a new process (new Cache) keeps the partial and asks only for the rest
    cache2 = Cache(tmp_path / "c")
    assert f"{ref.hex}.partial" in cache2.recovery.kept_partials
    good = MemSource({ref.digest: data}, "good")
    res = cache2.install(ref, [good])
    assert res.resumed_from == flaky.sent and good.requests == [(ref.digest, flaky.sent)]
    assert good.sent == len(data) - res.resumed_from
    assert res.path.read_bytes() == data and not partial.exists()


def test_corrupt_partial_is_discarded_and_refetched_from_zero(tmp_path):
    data = os.urandom(500_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    (cache.layout.tmp / f"{ref.hex}.partial").write_bytes(b"\0" * 100_000)  # garbage prefix
    src = MemSource({ref.digest: data})
    res = cache.install(ref, [src])
    assert src.requests == [(ref.digest, 100_000), (ref.digest, 0)]
    assert res.path.read_bytes() == data


def test_startup_removes_leftover_temps_but_keeps_partials(tmp_path):
    cache = Cache(tmp_path / "c")
    (cache.layout.tmp / ".abc.123.part").write_bytes(b"junk")
    (cache.layout.tmp / f"{'a' * 64}.partial").write_bytes(b"half")
    (cache.layout.tmp / f"{'b' * 64}.partial").write_bytes(b"")
    (cache.layout.blobs / "not-a-digest").write_bytes(b"?")
    (cache.root / "refs" / "m").mkdir(parents=True)
    (cache.root / "refs" / "m" / ".active.0123.tmp").write_bytes(b'{"vers')  # a cut-short ref write
    rep = Cache(tmp_path / "c").recovery
    assert os.listdir(cache.root / "refs" / "m") == []
    assert listing(cache.layout.tmp) == [f"{'a' * 64}.partial"]
    assert set(rep.removed_tmp) == {".abc.123.part", f"{'b' * 64}.partial", "refs/m/.active.0123.tmp"}
    assert rep.stray_blobs == ("not-a-digest",) and listing(cache.layout.blobs) == []


def _install_version(cache: Cache, key: SigningKey, name: str, version: int, files: dict[str, bytes]) -> RefValue:
    doc = manifest_doc(key, name, version, files)
    m = cache.install_manifest(name, version, doc, TrustedKeys([key.public]))
    cache.install_files(m, [MemSource({blob(d).digest: d for d in files.values()})])
    return RefValue(version, manifest_digest(doc["signed"]))


def test_activate_keeps_previous_and_rollback_is_local(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c")
    v1 = _install_version(cache, key, "m", 1, {"model.bin": b"one" * 1000})
    v2 = _install_version(cache, key, "m", 2, {"model.bin": b"two" * 1000})
    assert cache.activate("m", v1) is None
    assert cache.activate("m", v2) == v1
    assert cache.layout.read_ref("m", "active") == v2 and cache.layout.read_ref("m", "previous") == v1
    assert cache.rollback("m") == v1
    assert cache.layout.read_ref("m", "active") == v1 and cache.layout.read_ref("m", "previous") == v2
    _, m, paths = cache.resolve("m")
    assert m.version == 1 and paths["model.bin"].read_bytes() == b"one" * 1000


def test_activate_refuses_version_with_missing_blob(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c")
    doc = manifest_doc(key, "m", 1, {"a": b"aaaa"})
    cache.install_manifest("m", 1, doc)
    with pytest.raises(Conflict, match="is missing"):
        cache.activate("m", RefValue(1, manifest_digest(doc["signed"])))
    assert cache.layout.read_ref("m", "active") is None


def test_manifest_with_dotdot_path_is_refused(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c")
    doc = manifest_doc(key, "m", 1, {"ok": b"x"})
    doc["signed"]["files"][0]["path"] = "../../etc/passwd"
    doc = key.sign(doc["signed"])
    with pytest.raises(UsageError, match=r"invalid file path '\.\./\.\./etc/passwd'"):
        cache.install_manifest("m", 1, doc, TrustedKeys([key.public]))
    assert not (cache.root / "manifests" / "m" / "1.json").exists()


def test_manifest_with_bad_signature_is_refused(tmp_path):
    key, other = SigningKey.generate(), SigningKey.generate()
    cache = Cache(tmp_path / "c")
    doc = manifest_doc(other, "m", 1, {"ok": b"x"})
    with pytest.raises(IntegrityError, match="unknown key"):
        cache.install_manifest("m", 1, doc, TrustedKeys([key.public]))
    doc = manifest_doc(key, "m", 1, {"ok": b"x"})
    doc["signed"]["files"][0]["size"] = 2  # tampered after signing
    with pytest.raises(IntegrityError, match="does not verify"):
        cache.install_manifest("m", 1, doc, TrustedKeys([key.public]))


def test_startup_drops_refs_to_missing_blobs_and_falls_back_to_previous(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c")
    v1 = _install_version(cache, key, "m", 1, {"f": b"1" * 5000})
    v2 = _install_version(cache, key, "m", 2, {"f": b"2" * 5000})
    cache.activate("m", v1)
    cache.activate("m", v2)
    os.unlink(cache.layout.blob(blob(b"2" * 5000).digest))
    rep = Cache(tmp_path / "c").recovery
    assert any("m/active" in d and "missing" in d for d in rep.dropped_refs)
    assert cache.layout.read_ref("m", "active") == v1 and cache.layout.read_ref("m", "previous") is None


def test_ref_files_are_json_and_replaced_atomically(tmp_path):
    cache = Cache(tmp_path / "c")
    v = RefValue(3, "blake3:" + "c" * 64)
    cache.set_ref("m", "prefetched", v)
    assert json.loads(cache.layout.ref("m", "prefetched").read_text()) == v.to_json()
    assert listing(cache.layout.ref("m", "prefetched").parent) == ["prefetched"]  # no temp left behind
    cache.set_ref("m", "prefetched", None)
    assert cache.layout.read_ref("m", "prefetched") is None
    with pytest.raises(UsageError):
        cache.set_ref("m", "latest", v)


def test_budget_evicts_lru_and_never_pinned(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c", max_bytes=30_000)
    pinned = _install_version(cache, key, "m", 1, {"f": b"p" * 10_000})
    cache.activate("m", pinned)
    loose = [os.urandom(8_000) for _ in range(2)]
    for d in loose:
        cache.install(blob(d), [MemSource({blob(d).digest: d})])
    os.utime(cache.layout.blob(blob(loose[0]).digest), (1, 1))  # oldest
    new = os.urandom(8_000)
    cache.install(blob(new), [MemSource({blob(new).digest: new})])
    present = {b.digest for b in cache.blobs()}
    assert blob(loose[0]).digest not in present
    assert {blob(loose[1]).digest, blob(new).digest, blob(b"p" * 10_000).digest} <= present
    assert cache.metrics.evictions._value.get() == 1


def test_budget_refuses_when_pinned_set_fills_it(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c", max_bytes=15_000)
    v = _install_version(cache, key, "m", 1, {"f": b"p" * 10_000})
    cache.activate("m", v)
    big = os.urandom(9_000)
    with pytest.raises(BudgetExceeded, match="pinned by active/previous/prefetched"):
        cache.install(blob(big), [MemSource({blob(big).digest: big})])
    assert cache.metrics.budget_refusals._value.get() == 1
    assert cache.resolve("m")[2]["f"].read_bytes() == b"p" * 10_000  # still serving


def test_verify_all_quarantines_damage_and_gc_collects(tmp_path):
    key = SigningKey.generate()
    cache = Cache(tmp_path / "c")
    v = _install_version(cache, key, "m", 1, {"f": b"k" * 5000})
    cache.activate("m", v)
    orphan = os.urandom(3000)
    cache.install(blob(orphan), [MemSource({blob(orphan).digest: orphan})])
    p = cache.layout.blob(blob(b"k" * 5000).digest)
    os.chmod(p, 0o644)
    with open(p, "r+b") as f:
        f.write(b"X")
    rep = cache.verify_all()
    assert rep.checked == 2 and len(rep.damaged) == 1 and "corrupt or tampered" in rep.damaged[0]
    assert rep.damaged_digests == (blob(b"k" * 5000).digest,)
    assert not p.exists() and len(listing(cache.quarantine_dir)) == 1
    g = cache.gc()
    assert g.removed_blobs == 1 and g.freed_bytes == 3000
    assert listing(cache.layout.blobs) == [] and listing(cache.quarantine_dir) == []


def test_throttled_scrub_finds_the_same_damage(tmp_path):
    cache = Cache(tmp_path / "c")
    d = os.urandom(50_000)
    cache.install(blob(d), [MemSource({blob(d).digest: d})])
    p = cache.layout.blob(blob(d).digest)
    os.chmod(p, 0o644)
    p.write_bytes(d[:-1] + bytes([d[-1] ^ 1]))
    rep = cache.verify_all(bytes_per_second=10**9)
    assert len(rep.damaged) == 1


def test_unwritable_cache_directory_fails_clearly_at_start(tmp_path):
    """Root ignores file modes, so as root the directory is a read-only bind mount instead."""
    d = tmp_path / "ro"
    (d / "cache").mkdir(parents=True)
    # `cache gc` writes; `cache ls` only reads and must work on a read-only cache (issue 20)
    argv = [sys.executable, "-m", "pifarm", "cache", "gc", "--cache", str(d / "cache")]
    if os.geteuid() == 0:
        require(shutil.which("unshare") is not None, "needs unshare for a read-only bind mount")
        argv = ["unshare", "-m", "sh", "-c",
                f"mount --bind {d} {d} && mount -o remount,ro,bind {d} && exec \"$@\"", "sh", *argv]
    else:
        os.chmod(d / "cache", 0o555)
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "is not writable" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    r = subprocess.run([a if a != "gc" else "ls" for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0 blobs" in r.stdout, r.stderr  # a look needs no write access


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


# a real full tmpfs when we may mount one; a real RLIMIT_FSIZE (EFBIG) everywhere else
DISK_FULL_MODES = ["rlimit"] + (["tmpfs"] if _can_mount_tmpfs() else [])


@pytest.mark.parametrize("mode", DISK_FULL_MODES)
def test_disk_full_during_install_leaves_cache_intact(tmp_path, mode):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = textwrap.dedent(f"""
        import os, sys, json
        sys.path.insert(0, {str(ROOT)!r})
        from pifarm.cache.store import Cache, DiskFullError
        from tests.cache.helpers import MemSource, blob
        cache = Cache({str(mnt / "c")!r})
        small = os.urandom(200_000)
        cache.install(blob(small), [MemSource({{blob(small).digest: small}})])
        big = os.urandom(4 * 2**20)
        try:
            cache.install(blob(big), [MemSource({{blob(big).digest: big}})])
            print(json.dumps({{"error": None}}))
        except DiskFullError as e:
            ok = open(cache.layout.blob(blob(small).digest), "rb").read() == small
            print(json.dumps({{"error": str(e), "tmp": os.listdir(cache.layout.tmp),
                              "blobs": os.listdir(cache.layout.blobs), "small_ok": ok}}))
    """)
    if mode == "tmpfs":
        argv = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {mnt} && exec \"$@\"", "sh",
                sys.executable, "-c", code]
        preexec = None
    else:
        import resource
        import signal

        def preexec() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))

        argv = [sys.executable, "-c", code]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, preexec_fn=preexec)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] and "no space left" in out["error"] and "partial file was removed" in out["error"]
    assert out["tmp"] == [] and len(out["blobs"]) == 1 and out["small_ok"]


class FileSource:
    """A source that lays the blob in a file of its own and reads it back from there (as the peer
    source's piece store does), naming that file with `blob_file`."""

    def __init__(self, path: Path, data: bytes, name: str = "file"):
        self.path, self.name = path, name
        path.write_bytes(data)

    def blob_file(self, ref):
        return self.path

    def chunks(self, ref, start=0):
        with open(self.path, "rb") as f:
            f.seek(start)
            while chunk := f.read(65536):
                yield chunk

    def close(self) -> None:
        pass


def test_a_handed_file_that_verifies_is_linked_in_not_copied(tmp_path):
    data = os.urandom(300_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    src = FileSource(tmp_path / "piece-file", data)
    res = cache.install(ref, [src])
    assert res.source == "file" and res.path.read_bytes() == data
    assert res.path.stat().st_ino == src.path.stat().st_ino  # one copy of the bytes, not two
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o444
    assert listing(cache.layout.tmp) == []


def test_a_handed_file_that_fails_its_digest_is_not_linked(tmp_path):
    data = os.urandom(200_000)
    ref = blob(data)
    cache = Cache(tmp_path / "c")
    bad = bytearray(data)
    bad[1000] ^= 0x01
    evil = FileSource(tmp_path / "piece-file", bytes(bad), "evil")
    res = cache.install(ref, [evil, MemSource({ref.digest: data}, "good")])
    assert res.source == "good" and res.path.read_bytes() == data
    assert res.path.stat().st_ino != evil.path.stat().st_ino

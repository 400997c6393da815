"""Tamper watch with real inotify: changed or deleted blobs are caught, own changes are not."""

from __future__ import annotations

import os
import threading
import time

from pifarm.cache.store import Cache
from pifarm.cache.tamper import TamperWatch
from tests.cache.helpers import MemSource, blob
from tests.support.wait import eventually


def test_modified_blob_is_quarantined_and_refetched(tmp_path):
    cache = Cache(tmp_path / "c")
    data = os.urandom(100_000)
    ref = blob(data)
    src = MemSource({ref.digest: data})
    cache.install(ref, [src])
    refetched = threading.Event()

    def on_damage(digest: str, what: str) -> None:
        cache.install(ref, [src])
        refetched.set()

    watch = TamperWatch(cache, on_damage)
    watch.start()
    try:
        cache.touch(ref.digest)  # our own change: not tampering
        p = cache.layout.blob(ref.digest)
        os.chmod(p, 0o644)
        with open(p, "r+b") as f:
            f.seek(5000)
            f.write(b"\xff\xfe")
        assert eventually(refetched.is_set)
        assert watch.detected[0][0] == ref.digest and "modified" in watch.detected[0][1]
        assert cache.metrics.tampered._value.get() == 1
        assert len(os.listdir(cache.quarantine_dir)) == 1
        assert p.read_bytes() == data
    finally:
        watch.stop()


def test_deleted_blob_is_reported_but_own_eviction_is_not(tmp_path):
    cache = Cache(tmp_path / "c")
    a, b = os.urandom(10_000), os.urandom(10_000)
    for d in (a, b):
        cache.install(blob(d), [MemSource({blob(d).digest: d})])
    seen: list[str] = []
    watch = TamperWatch(cache, lambda digest, what: seen.append(digest))
    watch.start()
    try:
        cache._delete_blob(blob(a).digest)  # what eviction and gc do
        os.unlink(cache.layout.blob(blob(b).digest))  # behind the cache's back
        assert eventually(lambda: seen == [blob(b).digest])
        time.sleep(0.3)
        assert seen == [blob(b).digest]
        assert watch.detected == [(blob(b).digest, "deleted")]
    finally:
        watch.stop()


def test_write_right_after_own_touch_is_still_caught(tmp_path):
    """Regression: ctime ticks are coarse; a foreign write in the same tick as our touch leaves
    (inode, size, ctime) unchanged, so a close-after-write must always be re-hashed."""
    cache = Cache(tmp_path / "c")
    data = os.urandom(50_000)
    ref = blob(data)
    cache.install(ref, [MemSource({ref.digest: data})])
    p = cache.layout.blob(ref.digest)
    os.chmod(p, 0o644)
    seen: list[str] = []
    watch = TamperWatch(cache, lambda digest, what: seen.append(what))
    watch.start()
    try:
        with cache._lock:  # the watch thread waits here, so it sees the state after _remember
            with open(p, "r+b") as f:
                f.write(bytes([data[0] ^ 0xFF]))
            cache._remember(p)  # as if our own touch had landed in the same tick: fingerprint matches
        assert eventually(lambda: bool(seen))
        assert "modified" in seen[0]
    finally:
        watch.stop()

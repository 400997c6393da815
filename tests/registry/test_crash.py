"""Crash safety: `pifarm publish --data-dir` is SIGKILLed at random points; after the next open the
registry shows the old state or the new version, complete, never a part of one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifarm.registry.integrity import verify_file
from pifarm.registry.service import Registry
from pifarm.registry.signing import TrustedKeys
from pifarm.registry.snapshot import verify_manifest, verify_snapshot
from pifarm.registry.store import SNAPSHOT_KEY, manifest_key

TRIALS = 50
FILES = 6
FILE_SIZE = 1 << 20

# imports first, then waits for the go line, so the kill lands in the publish itself
CHILD = """
import sys
from pifarm.appliance.cli import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def _write_version(d: Path, rng: random.Random) -> None:
    d.mkdir(exist_ok=True)
    for i in range(FILES):
        (d / f"part{i}.bin").write_bytes(rng.randbytes(FILE_SIZE))


def _publish(data_dir: Path, src: Path, kill_after: float | None) -> tuple[bool, float]:
    """Run one publish; kill it `kill_after` s after go. (finished on its own, seconds to finish)."""
    argv = [sys.executable, "-c", CHILD, "publish", str(src), "--name", "m", "--channel", "stable",
            "--data-dir", str(data_dir), "--json"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"ready"
        t0 = time.monotonic()
        p.stdin.write(b"go\n")
        p.stdin.flush()
        if kill_after is None:
            p.wait(timeout=120)
            assert p.returncode == 0, p.stderr.read()
            return True, time.monotonic() - t0
        try:
            p.wait(timeout=kill_after)
            return True, time.monotonic() - t0
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            return False, time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        p.stdin.close()


def _check_consistent(data_dir: Path, src: Path) -> int:
    """Open (which recovers), check every invariant, return the number of live versions."""
    reg = Registry.open(data_dir)
    try:
        keys = TrustedKeys.from_files([reg.pubkey_path])
        snap = verify_snapshot(reg.snapshot_document(), keys)
        assert reg.store.get_document(SNAPSHOT_KEY) == reg.snapshot_bytes()[1]
        served = reg.served_versions()
        live_digests: set[str] = set()
        for s in served:
            m = verify_manifest(json.loads(reg.store.get_document(manifest_key(s.name, s.version))), keys,
                                expected_digest=s.manifest_digest)
            assert len(m.files) == FILES
            for f in m.files:
                verify_file(reg.store.local_blob_path(f.digest), f.ref)
                live_digests.add(f.digest)
        assert sorted(live_digests) == reg.store.list_blobs()
        assert reg.store.list_documents("models/") == sorted(manifest_key(s.name, s.version) for s in served)
        assert not list(reg.store.root.rglob("*.part")) and not list((data_dir / "tmp").iterdir())
        if served:
            assert snap.channel("m", "stable").version == served[-1].version
            assert [p.version for p in snap.models["m"].versions] == [s.version for s in served]
        return len(served)
    finally:
        reg.close()


@pytest.mark.slow
def test_kill_minus_9_during_publish_never_leaves_a_partial_version(tmp_path):
    rng = random.Random(20261127)
    data_dir, src = tmp_path / "agg", tmp_path / "src"
    _write_version(src, rng)
    _, full = _publish(data_dir, src, None)  # calibration: how long one complete publish takes
    count = _check_consistent(data_dir, src)
    assert count == 1
    outcomes = {"old": 0, "new": 0}
    for _ in range(TRIALS):
        _write_version(src, rng)
        _publish(data_dir, src, rng.uniform(0, full * 1.3))
        after = _check_consistent(data_dir, src)
        assert after in (count, count + 1)
        outcomes["new" if after == count + 1 else "old"] += 1
        count = after
    assert outcomes["old"] and outcomes["new"], outcomes

"""Crash safety: `pifarm publish --data-dir` is SIGKILLed at random points; after the next open the
registry shows the old state or the new version, complete, never a part of one."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifarm.signed.integrity import verify_file
from pifarm.registry.service import Registry
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_manifest, verify_snapshot
from pifarm.registry.store import SNAPSHOT_KEY, manifest_key

TRIALS = 50
FILES = 4
FILE_SIZE = 512 << 10

# A fork server imports pifarm once and forks one `pifarm publish` per request, so a trial costs
# the publish itself and the kill lands inside it rather than in interpreter start-up.
FORK_SERVER = r"""
import os, sys
from pifarm.appliance.cli import main
print("ready", flush=True)
for line in sys.stdin:
    argv = line.rstrip("\n").split("\0")
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os._exit(main(argv))
    print("pid", pid, flush=True)
    print("exit", os.waitpid(pid, 0)[1], flush=True)
"""


def _write_version(d: Path, rng: random.Random) -> None:
    d.mkdir(exist_ok=True)
    for i in range(FILES):
        (d / f"part{i}.bin").write_bytes(rng.randbytes(FILE_SIZE))


class Publisher:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def publish(self, data_dir: Path, src: Path, kill_after: float | None) -> float:
        """One publish, SIGKILLed `kill_after` s in unless done by then; returns the seconds it ran."""
        argv = ["publish", str(src), "--name", "m", "--channel", "stable", "--data-dir", str(data_dir), "--json"]
        self.p.stdin.write("\0".join(argv) + "\n")
        self.p.stdin.flush()
        pid = int(self.p.stdout.readline().split()[1])
        t0 = time.monotonic()
        ready, _, _ = select.select([self.p.stdout], [], [], 120 if kill_after is None else kill_after)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        status = int(self.p.stdout.readline().split()[1])
        assert kill_after is not None or status == 0, f"publish failed (wait status {status})"
        return time.monotonic() - t0

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _check_consistent(data_dir: Path, src: Path) -> int:
    """Open (which recovers), check every invariant, return the number of live versions."""
    reg = Registry.open(data_dir)
    try:
        keys = TrustedKeys.from_files([reg.pubkey_path])
        snap = verify_snapshot(reg.snapshot_document(), keys)
        assert reg.store.get_document(SNAPSHOT_KEY) == reg.snapshot_bytes()[1]
        served = reg.served_versions()
        live_digests: set[str] = set()
        for i, s in enumerate(served):
            m = verify_manifest(json.loads(reg.store.get_document(manifest_key(s.name, s.version))), keys,
                                expected_digest=s.manifest_digest)
            assert len(m.files) == FILES
            for f in m.files:
                # the newest version is re-hashed; older ones were on earlier trials (blobs are immutable)
                if i == len(served) - 1:
                    verify_file(reg.store.local_blob_path(f.digest), f.ref)
                else:
                    assert reg.store.has_blob(f.ref)
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
    pub = Publisher()
    try:
        count = 0
        outcomes = {"old": 0, "new": 0}
        for trial in range(TRIALS):
            if trial % 10 == 0:
                # calibration, again every 10 trials: how long one complete publish takes now (a
                # busy CI box can slow publishes down several times over between two calibrations,
                # and kills timed from a quiet moment would then all land before the commit)
                _write_version(src, rng)
                full = pub.publish(data_dir, src, None)
                count += 1
                assert _check_consistent(data_dir, src) == count
            _write_version(src, rng)
            pub.publish(data_dir, src, rng.uniform(0, full * 1.2))
            after = _check_consistent(data_dir, src)
            assert after in (count, count + 1)
            outcomes["new" if after == count + 1 else "old"] += 1
            count = after
    finally:
        pub.close()
    assert outcomes["old"] and outcomes["new"], outcomes

"""R1: kill -9 a pulling process at random points, over and over (real aggregator, real HTTP).

After every kill: every file in blobs/ hashes to its name, `active`/`previous` name versions
whose blobs are all present, and after start-up recovery so does `prefetched`. At the end a
pull that is allowed to finish consumes the resumable partials and `pifarm cache verify` passes.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifarm.cache.store import Cache
from pifarm.signed.integrity import BlobRef, verify_file
from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 100
VERSIONS = 3


def _pull_forever(url: str, pubkey: str, root: str, versions: int) -> None:
    from pifarm.initiator.http_source import HttpSource
    from pifarm.client.http import AggregatorClient
    from pifarm.initiator.versions import Documents, install_version, pick
    from pifarm.signed.signing import TrustedKeys

    trusted = TrustedKeys.from_files([pubkey])
    cache = Cache(root)
    docs = Documents(AggregatorClient(url))
    src = HttpSource(url)
    snap, _ = docs.snapshot(trusted)
    v = random.randint(1, versions)
    for _ in range(100):  # bounded: the parent kills us long before this ends
        install_version(cache, docs, trusted, "r1", pick(snap, "r1", version=v), [src])
        cache.gc()  # drops the version that is neither active nor previous, so it is fetched again
        v = v % versions + 1
    os._exit(0)


def check_cache(root: Path) -> None:
    c = Cache(root, recover=False)
    for b in c.blobs():
        verify_file(c.layout.blob(b.digest), BlobRef(b.digest, b.size))
    for which in ("active", "previous"):
        v = c.layout.read_ref("r1", which)
        if v is not None:
            assert c._ref_problem("r1", v) is None, which
    c = Cache(root)  # start-up recovery
    for which in ("active", "previous", "prefetched"):
        v = c.layout.read_ref("r1", which)
        if v is not None:
            assert c._ref_problem("r1", v) is None, which


@pytest.mark.slow
def test_r1_kill_minus_9_at_random_points(aggregator, tmp_path):
    rng = random.Random(1234)
    with aggregator.client() as client:
        for i in range(VERSIONS):
            f = tmp_path / f"v{i}.bin"
            f.write_bytes(os.urandom(2 * 2**20 + i))
            client.publish(f, "r1", "stable", format="raw")
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    killed_mid = 0
    for trial in range(TRIALS):
        p = ctx.Process(target=_pull_forever, args=(aggregator.url, str(aggregator.pubkey), str(root), VERSIONS))
        p.start()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=10)
        assert p.exitcode in (-signal.SIGKILL, 0), f"trial {trial}: worker exited with {p.exitcode}"
        killed_mid += p.exitcode == -signal.SIGKILL
        check_cache(root)
    assert killed_mid >= TRIALS * 0.9
    # a pull allowed to finish leaves no partials behind, and the CLI's scrub passes
    r = subprocess.run([sys.executable, "-m", "pifarm", "pull", "r1", "--registry", aggregator.url, "--cache",
                        str(root), "--trust", str(aggregator.pubkey), "-q"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for v in range(1, VERSIONS + 1):
        r = subprocess.run([sys.executable, "-m", "pifarm", "pull", f"r1@{v}", "--registry", aggregator.url,
                            "--cache", str(root), "--trust", str(aggregator.pubkey), "-q"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert os.listdir(root / "tmp") == []
    r = subprocess.run([sys.executable, "-m", "pifarm", "cache", "verify", "--cache", str(root)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "all verified" in r.stdout, r.stderr

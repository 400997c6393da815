"""Target benchmarks (issue 5).

T1  volume build throughput vs `cp` of the same bytes (ratio = cp time / build time; the build
    also verifies every blob with BLAKE3 and fsyncs, so 1.0 would mean verification is free).
T2  reconcile time for adding one version to a subsystem that already has 100, on the fake
    configfs, vs nvmetcli's way (tear everything down and rebuild all 101) in the same run
    (ratio = add / rebuild; lower is better). Kernel steps for both are in the detail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import FileEntry, Manifest
from pifarm.signed.signing import SigningKey
from pifarm.volume.format import write_volume
from pifarm.target.configfs import Root
from pifarm.target.reconciler import apply, diff
from pifarm.target.spec import Export, Scope, TargetSpec, build_spec, observe
from pifarm.testing.fake_configfs import FakeConfigfs

NQN = "nqn.2014-08.org.pifarm:aggregator:bench"
SIZES = (96 << 20, 24 << 20, 4 << 20, 1 << 20)  # one model's files: ~125 MiB


def _best(fn, n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_build(workdir: Path) -> dict:
    src = workdir / "blobs"
    src.mkdir()
    files, blobs = [], {}
    for i, size in enumerate(SIZES):
        data = os.urandom(size)
        d = digest_bytes(data)
        p = src / d.split(":")[1]
        p.write_bytes(data)
        blobs[d] = p
        files.append(FileEntry(f"f{i}.bin", size, d))
    doc = SigningKey.generate().sign(Manifest("bench", 1, "raw", tuple(files), "2026-11-27T00:00:00Z").to_json())
    out = workdir / "out"
    out.mkdir()

    def build():
        write_volume(out / "bench-v1.vol", doc, blobs.__getitem__)

    def cp():
        dst = workdir / "cp"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        subprocess.run(["cp", *map(str, blobs.values()), str(dst)], check=True)
        subprocess.run(["sync", "-f", str(dst)], check=True)  # the build fsyncs too

    t_build, t_cp = _best(build), _best(cp)
    total = sum(SIZES)
    return {"T1": {"what": "volume build (verify+align+fsync) vs cp+sync of the same bytes", "ratio": t_cp / t_build,
                   "goal": ">=0.5", "detail": {"MiB": total >> 20, "build_MiBps": round(total / t_build / 2**20),
                                               "cp_MiBps": round(total / t_cp / 2**20)}}}


def bench_reconcile(workdir: Path) -> dict:
    vols = workdir / "vols"
    vols.mkdir()
    exports = []
    for i in range(1, 102):
        p = vols / f"m-v{i}.vol"
        with open(p, "wb") as f:
            f.truncate(4096)
        exports.append(Export("m", i, digest_bytes(str(i).encode()), str(p)))

    def spec(n):
        ex = exports[:n]
        return build_spec(subsystem_nqn=NQN, exports=ex, nsids={e.key: e.version for e in ex},
                          ports={1: ("127.0.0.1", 4420)}, hosts={f"nqn.2014-08.org.pifarm:node:n{i}": {} for i in range(8)},
                          buffered_io=False)

    base, goal = spec(100), spec(101)

    def fresh():
        root = Root(FakeConfigfs("6.12"))
        apply(root, diff(base, observe(root), Scope.of(base)))
        return root

    steps = {}

    def add():
        root = fresh()
        t = time.perf_counter()
        ops = diff(goal, observe(root), Scope.of(goal))
        apply(root, ops)
        steps["add"] = len(ops)
        return time.perf_counter() - t

    def rebuild():
        root = fresh()
        t = time.perf_counter()
        teardown = diff(TargetSpec(), observe(root), None)
        apply(root, teardown)
        build = diff(goal, observe(root), None)
        apply(root, build)
        steps["rebuild"] = len(teardown) + len(build)
        return time.perf_counter() - t

    # interleaved, best of 15 each: the box is shared, so take each side's quietest run
    t_add = t_rebuild = float("inf")
    for _ in range(15):
        t_add, t_rebuild = min(t_add, add()), min(t_rebuild, rebuild())
    return {"T2": {"what": "reconcile: add 1 version to a 100-namespace subsystem vs nvmetcli-style rebuild (fake configfs)",
                   "ratio": t_add / t_rebuild, "goal": "<=0.5",
                   "detail": {"add_ms": round(t_add * 1000, 2), "rebuild_ms": round(t_rebuild * 1000, 2),
                              "add_steps": steps["add"], "rebuild_steps": steps["rebuild"],
                              "namespaces_disturbed_by_add": 0}}}


def run(workdir: Path) -> dict:
    out = {}
    out.update(bench_build(workdir))
    out.update(bench_reconcile(workdir))
    return out

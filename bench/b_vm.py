"""P6 (issue 6), in the VM: the nvme-kernel source's read + verify of a volume's blobs from the
NVMe/TCP block device, against `dd` of the same byte range from the same device (O_DIRECT both).

The host side boots the vm tier once (tests/vm/harness.py) and runs this module in the guest
(`python -m bench.b_vm guest`), where a kernel nvmet target exports the volume over loopback and
the kernel host attaches it. Rounds alternate dd / source so neither gets a warmer cache;
the best round of each counts. Under TCG absolute numbers are meaningless: only the ratio is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIZE = 48 << 20  # total blob bytes: enough to amortise setup, short under TCG
ROUNDS = 3
NQN = "nqn.2024-01.io.pifarm:bench-vm"


def run(workdir: Path) -> dict:
    from tests.vm.harness import Vm, vm_available

    ok, why = vm_available()
    if not ok:
        raise RuntimeError(f"vm tier unavailable: {why}")
    with Vm("bookworm") as vm:
        r = vm.run(f"python -m bench.b_vm guest --size {SIZE} --rounds {ROUNDS}", timeout=900,
                   env={"PYTHONPATH": os.getcwd()})
    if r.rc != 0:
        raise RuntimeError(f"b_vm in the VM failed:\n{r.output[-3000:]}")
    d = json.loads(r.output.strip().splitlines()[-1])
    return {
        "K6": {
            "what": "VM: nvme-kernel source read+verify of volume blobs vs dd (O_DIRECT) of the same bytes",
            "ratio": round(d["source_MBps"] / d["dd_MBps"], 3),
            "goal": ">=0.5",
            "detail": {k: d[k] for k in ("bytes", "dd_MBps", "source_MBps", "read_only_MBps", "kernel")},
        }
    }


# ---------------------------------------------------------------------- guest side
def guest(size: int, rounds: int) -> dict:
    import random

    from pifarm.initiator.blockdev_source import BlockDeviceSource
    from pifarm.initiator.identity import ensure_identity
    from pifarm.initiator.kernel_attach import AttachSettings, KernelAttacher
    from pifarm.initiator.namespaces import NamespaceIndex
    from pifarm.signed.integrity import BlobRef, StreamVerifier, digest_bytes
    from pifarm.signed.manifest import namespace_uuid
    from pifarm.volume.format import VolumeReader
    from tests.initiator_kernel.helpers import build_volume, trusted
    from pifarm.signed.signing import SigningKey

    scratch = Path(os.environ.get("PIFARM_VM_SCRATCH", "/scratch"))
    rng = random.Random(6)
    parts = (size // 2 + 12345, size // 3, size - size // 2 - size // 3 - 12345)
    key = SigningKey.generate()
    vol = build_volume(scratch / "bench.vol", key, "bench", 1, {f"b{i}": rng.randbytes(n) for i, n in enumerate(parts)})
    ident = ensure_identity("/tmp/bench-identity")
    c = Path("/sys/kernel/config/nvmet")
    s = c / "subsystems" / NQN
    s.mkdir()
    (s / "attr_allow_any_host").write_text("1")
    ns = s / "namespaces" / "1"
    ns.mkdir()
    (ns / "device_path").write_text(str(vol.path))
    (ns / "device_uuid").write_text(str(namespace_uuid(vol.digest)))
    (ns / "enable").write_text("1")
    p = c / "ports" / "1"
    p.mkdir()
    for k, v in (("addr_trtype", "tcp"), ("addr_adrfam", "ipv4"), ("addr_traddr", "127.0.0.1"), ("addr_trsvcid", "4420")):
        (p / k).write_text(v)
    os.symlink(s, p / "subsystems" / NQN)
    res = KernelAttacher(AttachSettings("127.0.0.1", 4420), ident).attach_once()
    if res.state != "live":
        raise SystemExit(f"attach failed: {res}")
    index = NamespaceIndex()
    found = index.wait_for(vol.digest, 60)
    if found is None:
        raise SystemExit("namespace not found by UUID")
    dev = str(found.dev)
    with VolumeReader.from_file(vol.path) as r:
        extents = [(d, r.extent(d)) for _p, d, _o, _s in r.entries]
    first = min(o for _d, (o, _s) in extents)
    last = max(o + n for _d, (o, n) in extents)
    span = (last - first + 4095) // 4096 * 4096  # O_DIRECT: whole blocks (the volume is block padded)
    blobs = [BlobRef(digest_bytes(b), len(b)) for b in vol.files.values()]
    src = BlockDeviceSource(trusted(key), lambda: [(dev, found)], self_check=False)
    src.refresh()

    def dd() -> float:
        t = time.perf_counter()
        subprocess.run(["dd", f"if={dev}", "of=/dev/null", "bs=1M", "iflag=direct,skip_bytes,count_bytes",
                        f"skip={first}", f"count={span}"], check=True, capture_output=True)
        return time.perf_counter() - t

    def source(verify: bool) -> float:
        t = time.perf_counter()
        for ref in blobs:
            v = StreamVerifier(ref, "bench") if verify else None
            for chunk in src.chunks(ref):
                if v:
                    v.update(chunk)
            if v:
                v.finish()
        return time.perf_counter() - t

    dd_t, src_t, ro_t = [], [], []
    for _ in range(rounds):
        dd_t.append(dd())
        src_t.append(source(True))
        ro_t.append(source(False))
    src.close()
    total = sum(b.size for b in blobs)
    return {"bytes": total, "dd_MBps": round(span / min(dd_t) / 1e6, 1),
            "source_MBps": round(total / min(src_t) / 1e6, 1), "read_only_MBps": round(total / min(ro_t) / 1e6, 1),
            "kernel": os.uname().release}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "guest":
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("mode")
        ap.add_argument("--size", type=int, default=SIZE)
        ap.add_argument("--rounds", type=int, default=ROUNDS)
        a = ap.parse_args()
        print(json.dumps(guest(a.size, a.rounds)))
    else:
        print(json.dumps(run(Path("."))))

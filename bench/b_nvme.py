"""Userspace NVMe/TCP benchmarks.

P7    (VM) userspace initiator vs the kernel nvme-tcp host reading the same kernel-target
      namespace: ratio = kernel seconds / userspace seconds (goal >= 0.5).
P7-host  initiator <-> userspace target on host loopback vs a plain TCP stream of the same bytes
      (ratio = NVMe/TCP throughput / raw TCP throughput), with CPU seconds per GiB on each side.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import FileEntry, Manifest
from pifarm.volume.format import write_volume
from tests.support.procs import free_port, stop_process
from tests.support.wait import wait_listening

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
SUBNQN = "nqn.2024-01.io.pifarm:bench"
GIB = 1 << 30


def _volume(workdir: Path, size: int) -> Path:
    data = os.urandom(1 << 20) * (size >> 20)
    d = digest_bytes(data)
    store = workdir / "blobs"
    store.mkdir(parents=True, exist_ok=True)
    (store / d[7:]).write_bytes(data)
    m = Manifest("bench", 1, "raw", (FileEntry("blob.bin", len(data), d),), "2026-11-27T00:00:00Z")
    out = workdir / "vols" / "bench-1.vol"
    write_volume(out, m.to_json(), lambda dg: store / dg[7:])
    shutil.rmtree(store)
    return out


def _raw_tcp(path: Path) -> float:
    """Seconds to push the file through a loopback TCP socket (sendfile) into a reader."""
    size = path.stat().st_size
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, open(path, "rb") as f:
            conn.sendfile(f)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        buf = bytearray(1 << 20)
        got = 0
        t0 = time.perf_counter()
        while got < size:
            n = c.recv_into(buf)
            if not n:
                break
            got += n
        dt = time.perf_counter() - t0
    t.join(timeout=10)
    srv.close()
    return dt


def _proc_cpu(pid: int) -> float:
    """utime + stime of a child, from /proc (so interpreter start-up is not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_loopback(workdir: Path) -> dict:
    from pifarm.initiator.nvme_tcp import ConnectParams, NvmeTcpClient

    vol = _volume(workdir / "host", 128 << 20)
    size = vol.stat().st_size
    port = free_port()
    target = subprocess.Popen([sys.executable, "-m", "pifarm", "target", "serve-userspace", "--data-dir",
                               str(vol.parent), "--listen", f"127.0.0.1:{port}", "--subnqn", SUBNQN,
                               "--allow-host", HOSTNQN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, target)
        best, cpu = None, None
        for hd in (False, True):
            params = ConnectParams("127.0.0.1", port, SUBNQN, HOSTNQN, hdgst=hd, ddgst=hd, io_queues=2, queue_depth=32)
            with NvmeTcpClient(params, retries=0) as c:
                [ns] = c.namespaces()
                tc0 = _proc_cpu(target.pid)
                c0, t0 = time.process_time(), time.perf_counter()
                for _chunk in c.iter_read(ns, 0, size, ahead=4):  # the node source's defaults
                    pass
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                tc = _proc_cpu(target.pid) - tc0
            if not hd:
                best, cpu, tcpu = dt, dc, tc
            else:
                dgst_dt, dgst_cpu, dgst_tcpu = dt, dc, tc
    finally:
        stop_process(target, timeout=20)
    raw = min(_raw_tcp(vol) for _ in range(2))
    return {
        "bytes": size,
        "userspace_MBps": round(size / best / 1e6, 1),
        "userspace_digests_MBps": round(size / dgst_dt / 1e6, 1),
        "raw_tcp_MBps": round(size / raw / 1e6, 1),
        "initiator_cpu_s_per_GiB": round(cpu * GIB / size, 2),
        "initiator_cpu_s_per_GiB_digests": round(dgst_cpu * GIB / size, 2),
        "target_cpu_s_per_GiB": round(tcpu * GIB / size, 2),
        "target_cpu_s_per_GiB_digests": round(dgst_tcpu * GIB / size, 2),
        "ratio": (size / best) / (size / raw),
    }


def _p7(workdir: Path) -> dict | None:
    try:
        from tests.vm.harness import Vm, vm_available
    except ImportError:
        return None
    ok, why = vm_available()
    if not ok:
        return {"skipped": why}
    vol = _volume(workdir / "vm", 64 << 20)
    with Vm("bookworm") as vm:
        shutil.copy(vol, vm.share / vol.name)
        r = vm.run(f"""
            set -e
            mkdir -p "$PIFARM_VM_SCRATCH/vols"; cp "$PIFARM_VM_SHARE/{vol.name}" "$PIFARM_VM_SCRATCH/vols/"
            python -m tests.nvme.vm_checks p7 --volume "$PIFARM_VM_SCRATCH/vols/{vol.name}" \
                --subnqn {SUBNQN} --hostnqn {HOSTNQN} --rounds 3
            """, timeout=600)
    if r.rc != 0:
        raise RuntimeError(f"P7 in the VM failed:\n{r.output[-3000:]}")
    return json.loads(r.output.strip().splitlines()[-1])


def run(workdir: Path) -> dict:
    host = _host_loopback(workdir)
    out = {
        "P7-host": {
            "what": "userspace NVMe/TCP initiator<->target on loopback vs raw TCP stream",
            "ratio": host.pop("ratio"),
            "goal": "report",
            "detail": host,
        }
    }
    p7 = _p7(workdir)
    if p7 and "ratio" in p7:
        out["P7"] = {
            "what": "VM: userspace initiator vs kernel nvme-tcp host, same kernel-target namespace",
            "ratio": p7.pop("ratio"),
            "goal": ">=0.5",
            "detail": {k: round(v, 3) if isinstance(v, float) else v for k, v in p7.items()},
        }
    return out

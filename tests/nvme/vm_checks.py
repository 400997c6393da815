"""Programs the vm-tier tests run inside the VM (`python -m tests.nvme.vm_checks CMD ...`).

Each prints one JSON object on its last line; the host-side test asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CFS = Path("/sys/kernel/config/nvmet")


def _w(path: Path, value: str) -> None:
    path.write_text(value)


def kernel_target(volume: Path, subnqn: str, hosts: list[str], ns_uuid: str, nguid_hex: str, port: int = 4420) -> None:
    """Export `volume` through the kernel's nvmet over TCP on 127.0.0.1 (configfs, kernel order)."""
    sub = CFS / "subsystems" / subnqn
    sub.mkdir()
    _w(sub / "attr_allow_any_host", "0")
    for h in hosts:
        (CFS / "hosts" / h).mkdir(exist_ok=True)
        (sub / "allowed_hosts" / h).symlink_to(CFS / "hosts" / h)
    ns = sub / "namespaces" / "1"
    ns.mkdir()
    _w(ns / "device_path", str(volume))
    _w(ns / "device_uuid", ns_uuid)
    g = nguid_hex
    _w(ns / "device_nguid", f"{g[:8]}-{g[8:12]}-{g[12:16]}-{g[16:20]}-{g[20:]}")
    _w(ns / "enable", "1")
    p = CFS / "ports" / "1"
    p.mkdir()
    for k, v in (("addr_trtype", "tcp"), ("addr_adrfam", "ipv4"), ("addr_traddr", "127.0.0.1"),
                 ("addr_trsvcid", str(port))):
        _w(p / k, v)
    (p / "subsystems" / subnqn).symlink_to(sub)


def initiator_vs_kernel(args: argparse.Namespace) -> dict:
    """pifarm's initiator against the kernel target: discover, identify, read + verify, refusal."""
    from pifarm.initiator.nvme_tcp import ConnectParams, NvmeTcpClient
    from pifarm.initiator.nvme_tcp.source import NvmeTcpUserspaceSource
    from pifarm import nvmewire as w
    from pifarm.signed.integrity import StreamVerifier
    from pifarm.signed.manifest import namespace_nguid, namespace_uuid
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(args.volume) as vr:
        digest, manifest = vr.manifest_digest, vr.manifest
    kernel_target(Path(args.volume), args.subnqn, [args.hostnqn], str(namespace_uuid(digest)),
                  namespace_nguid(digest).hex())
    out: dict = {"manifest_digest": digest}
    with NvmeTcpClient(ConnectParams("127.0.0.1", 4420, hostnqn=args.hostnqn, kato_ms=0), retries=0) as c:
        log = c.discovery_log()
    out["discovered"] = sorted(e.subnqn for e in log.entries if e.subtype == w.SUBTYPE_NVME)
    for hd in (False, True):
        params = ConnectParams("127.0.0.1", 4420, args.subnqn, args.hostnqn, hdgst=hd, ddgst=hd, io_queues=2)
        client = NvmeTcpClient(params, retries=0)
        src = NvmeTcpUserspaceSource([client])
        try:
            ident = client.identify()
            [ns] = client.namespaces()
            verified = 0
            for f in manifest.files:
                v = StreamVerifier(f.ref, "nvme-tcp-userspace")
                for chunk in src.chunks(f.ref):
                    v.update(chunk)
                v.finish()
                verified += 1
            whole = client.read(ns, 0, ns.size)
            same = whole == Path(args.volume).read_bytes()[: ns.size]
        finally:
            src.close()
        out[f"digests_{hd}"] = {"uuid": str(ns.uuid), "nguid": (ns.nguid or b"").hex(), "size": ns.size,
                                "verified_blobs": verified, "whole_volume_equal": same,
                                "model": ident.model, "mdts": ident.mdts}
    try:
        with NvmeTcpClient(ConnectParams("127.0.0.1", 4420, args.subnqn, args.other_host), retries=0):
            out["refused"] = "connected"
    except w.NvmeStatusError as e:
        out["refused"] = str(e)
        out["refused_status"] = e.status
    return out


def initiator_vs_auth(args: argparse.Namespace) -> dict:
    """The kernel target demands DH-HMAC-CHAP for our host: without a secret the initiator
    refuses clearly; with the right one it authenticates every queue and reads; a wrong one is
    refused by the target."""
    from pifarm.initiator.nvme_tcp import ConnectParams, NvmeTcpClient
    from pifarm import nvmewire as w
    from pifarm.signed.manifest import namespace_nguid, namespace_uuid
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(args.volume) as vr:
        digest = vr.manifest_digest
    kernel_target(Path(args.volume), args.subnqn, [args.hostnqn], str(namespace_uuid(digest)),
                  namespace_nguid(digest).hex())
    key = _nvme("gen-dhchap-key", f"--nqn={args.hostnqn}", "--hmac=1").stdout.strip()
    wrong = _nvme("gen-dhchap-key", f"--nqn={args.hostnqn}", "--hmac=1").stdout.strip()
    _w(CFS / "hosts" / args.hostnqn / "dhchap_key", key)
    out: dict = {"key_prefix": key[:8]}
    for name, secret in (("none", None), ("right", key), ("wrong", wrong)):
        params = ConnectParams("127.0.0.1", 4420, args.subnqn, args.hostnqn, timeout=5, io_queues=2,
                               dhchap_secret=secret)
        try:
            with NvmeTcpClient(params, retries=0) as c:
                [ns] = c.namespaces()
                same = c.read(ns, 0, ns.size) == Path(args.volume).read_bytes()[: ns.size]
                out[name] = {"uuid": str(ns.uuid), "equal": same, "queues": len(c.controller.io)}
        except w.NvmeStatusError as e:
            out[name] = {"error": str(e), "status": e.status}
    return out


def _wait(cond, what: str, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _nvme(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nvme", *argv], capture_output=True, text=True, timeout=60)


def kernel_vs_userspace(args: argparse.Namespace) -> dict:
    """The kernel's nvme-tcp host against pifarm's userspace target."""
    import socket

    from pifarm.signed.manifest import namespace_uuid
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(args.volume) as vr:
        digest = vr.manifest_digest
    vols = Path(args.volume).parent
    server = subprocess.Popen(
        [sys.executable, "-m", "pifarm", "target", "serve-userspace", "--data-dir", str(vols), "--listen",
         "127.0.0.1:4421", "--subnqn", args.subnqn, "--allow-host", args.hostnqn],
        stdout=subprocess.DEVNULL, stderr=open(Path(args.share) / "target.log", "w"))

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", 4421), timeout=0.2).close()
            return True
        except OSError:
            return server.poll() is not None  # stop waiting if it died

    out: dict = {"manifest_digest": digest, "expected_uuid": str(namespace_uuid(digest))}
    try:
        _wait(listening, "the userspace target to listen", 60)
        if server.poll() is not None:
            raise SystemExit(f"target exited rc={server.returncode}: {(Path(args.share) / 'target.log').read_text()}")
        hostid = args.hostnqn.rsplit(":", 1)[1]
        d = _nvme("discover", "-t", "tcp", "-a", "127.0.0.1", "-s", "4421", f"--hostnqn={args.hostnqn}", f"--hostid={hostid}")
        out["discover_rc"], out["discover"] = d.returncode, d.stdout + d.stderr
        for flags in ([], ["-g", "-G"]):
            key = "digests" if flags else "plain"
            c = _nvme("connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4421", "-n", args.subnqn,
                      f"--hostnqn={args.hostnqn}", f"--hostid={hostid}", *flags)
            res: dict = {"connect_rc": c.returncode, "connect_out": c.stdout + c.stderr}
            if c.returncode == 0:
                blk: list[Path] = []

                def appeared() -> bool:
                    blk[:] = [p for p in Path("/sys/block").glob("nvme*n1")]
                    return bool(blk)

                _wait(appeared, "the namespace block device")
                dev = Path("/dev") / blk[0].name
                res["uuid"] = (blk[0] / "uuid").read_text().strip()
                res["ro"] = (blk[0] / "ro").read_text().strip()
                copy = Path(args.share) / f"dd-{key}.img"
                dd = subprocess.run(["dd", f"if={dev}", f"of={copy}", "bs=1M", "iflag=direct"],
                                    capture_output=True, text=True, timeout=120)
                res["dd_rc"] = dd.returncode
                res["dd_equal"] = copy.read_bytes() == Path(args.volume).read_bytes()
                copy.unlink()
                wr = subprocess.run(["dd", "if=/dev/zero", f"of={dev}", "bs=4k", "count=1", "oflag=direct"],
                                    capture_output=True, text=True, timeout=60)
                res["write_rc"], res["write_err"] = wr.returncode, wr.stderr.strip()[-200:]
                # nvme-cli's passthrough Write skips the block layer's read-only flag, so this one
                # really reaches the target, which must answer "namespace is write protected".
                pw = _nvme("write", str(dev), "--start-block=0", "--block-count=0", "--data-size=4096",
                           "--data=/dev/zero")
                res["passthru_write_rc"], res["passthru_write_out"] = pw.returncode, (pw.stdout + pw.stderr).strip()[-300:]
                if key == "plain" and args.late_volume:
                    # publish another version while connected: the target's async event makes
                    # the kernel rescan, and the new namespace appears with its own UUID
                    tmp = vols / ".late.part"
                    tmp.write_bytes(Path(args.late_volume).read_bytes())
                    tmp.rename(vols / Path(args.late_volume).name)
                    ctl_name = blk[0].name.rsplit("n", 1)[0]
                    late: list[Path] = []

                    def second() -> bool:
                        late[:] = [p for p in Path("/sys/block").glob(f"{ctl_name}n*") if p.name != blk[0].name]
                        return bool(late)

                    _wait(second, "the newly published namespace", 30)
                    res["late_uuid"] = (late[0] / "uuid").read_text().strip()
                ctl = blk[0].name.rsplit("n", 1)[0]
                _nvme("disconnect", "-d", ctl)
                _wait(lambda: not list(Path("/sys/block").glob("nvme*n*")), "the disconnect")
            out[key] = res
        r = _nvme("connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4421", "-n", args.subnqn,
                  f"--hostnqn={args.other_host}", f"--hostid={args.other_host.rsplit(':', 1)[1]}")
        out["refused_rc"], out["refused_out"] = r.returncode, (r.stdout + r.stderr).strip()
        out["dmesg"] = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()[-15:]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    return out


def p7(args: argparse.Namespace) -> dict:
    """P7: userspace initiator vs the kernel host, reading the same kernel-target namespace."""
    from pifarm.initiator.nvme_tcp import ConnectParams, NvmeTcpClient
    from pifarm.signed.manifest import namespace_nguid, namespace_uuid
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(args.volume) as vr:
        digest = vr.manifest_digest
    kernel_target(Path(args.volume), args.subnqn, [args.hostnqn], str(namespace_uuid(digest)),
                  namespace_nguid(digest).hex())
    size = Path(args.volume).stat().st_size
    hostid = args.hostnqn.rsplit(":", 1)[1]
    c = _nvme("connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-n", args.subnqn,
              f"--hostnqn={args.hostnqn}", f"--hostid={hostid}", "-i", "2")
    if c.returncode:
        raise SystemExit(f"nvme connect failed: {c.stdout}{c.stderr}")
    blk: list[Path] = []
    _wait(lambda: bool(blk.extend(Path("/sys/block").glob("nvme*n1")) or blk), "block device")
    dev = f"/dev/{blk[0].name}"
    kernel_runs: list[float] = []
    variants = {(1, 2): [], (1, 4): [], (2, 2): [], (2, 4): []}  # (I/O queues, chunks in flight)
    for _ in range(args.rounds):
        t0 = time.monotonic()
        subprocess.run(["dd", f"if={dev}", "of=/dev/null", "bs=1M", "iflag=direct"], check=True,
                       capture_output=True, timeout=300)
        kernel_runs.append(time.monotonic() - t0)
        for (queues, ahead), runs in variants.items():
            with NvmeTcpClient(ConnectParams("127.0.0.1", 4420, args.subnqn, args.hostnqn, io_queues=queues,
                                             queue_depth=32), retries=0) as cl:
                [ns] = cl.namespaces()
                t0 = time.monotonic()
                for _chunk in cl.iter_read(ns, 0, size, ahead=ahead):
                    pass
                runs.append(time.monotonic() - t0)
    _nvme("disconnect-all")
    k = min(kernel_runs)
    u = min(variants[(2, 4)])  # what the node's source uses by default (io_queues=2, 4 chunks ahead)
    extra = {f"userspace_MBps_q{q}_ahead{a}": size / min(r) / 1e6 for (q, a), r in variants.items()}
    return {"bytes": size, "kernel_s": k, "userspace_s": u, "kernel_MBps": size / k / 1e6,
            "userspace_MBps": size / u / 1e6, **extra, "ratio": k / u}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["initiator-vs-kernel", "kernel-vs-userspace", "p7", "initiator-vs-auth"])
    ap.add_argument("--volume", required=True)
    ap.add_argument("--subnqn", required=True)
    ap.add_argument("--hostnqn", required=True)
    ap.add_argument("--other-host", default="nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555")
    ap.add_argument("--share", default=os.environ.get("PIFARM_VM_SHARE", "/tmp"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--late-volume", default="", help="published into the data dir while a host is connected")
    args = ap.parse_args(argv)
    fn = {"initiator-vs-kernel": initiator_vs_kernel, "kernel-vs-userspace": kernel_vs_userspace, "p7": p7,
          "initiator-vs-auth": initiator_vs_auth}[args.cmd]
    print(json.dumps(fn(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Issue 17 in the VM: one kernel target exports a pifarm volume on TWO TCP ports (standing for
two aggregators of one bucket: same subsystem NQN, same NSID/UUID/NGUID) and the kernel host's
native NVMe multipath sees one namespace head with two paths. Run as root inside the vm tier
(tests/vm/test_multipath.py); prints one JSON document (the facts) on the last line.

    registry assigns the version its nsid (not 1: two older versions are retired first) ->
    `pifarm target apply` with addresses 127.0.0.1 and 127.0.0.2 (ports 1 and 2) -> the node's
    KernelAttacher connects once per address -> one head /dev/nvmeXnY, two hidden paths, found
    by the node's NamespaceIndex; NSID/UUID/NGUID as the registry assigned -> iopolicy
    round-robin: a verified read of the volume goes over both paths -> port 2 removed by
    `pifarm target apply` -> the same head still verifies, read over the remaining path only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the project root (the harness runs scripts there)

from pifarm.appliance.cli import main as pifarm  # noqa: E402
from pifarm.initiator.identity import ensure_identity  # noqa: E402
from pifarm.initiator.kernel_attach import AttachSettings, KernelAttacher  # noqa: E402
from pifarm.initiator.namespaces import NamespaceIndex  # noqa: E402
from pifarm.registry.service import Registry  # noqa: E402
from pifarm.signed.manifest import namespace_nguid, namespace_uuid  # noqa: E402
from pifarm.volume.format import VolumeReader  # noqa: E402
from tests.vm.scenarios import common  # noqa: E402

SCRATCH = Path(os.environ.get("PIFARM_VM_SCRATCH", "/scratch"))
NQN = "nqn.2014-08.org.pifarm:aggregator:shared"  # what every aggregator of the bucket sets
ADDRS = ("127.0.0.1", "127.0.0.2")  # all of 127/8 is on lo: two ports without a netns
WAIT = 90.0  # bound on every wait below (TCG on a busy 2-core box)
_PATH = re.compile(r"^nvme\d+c(\d+)n\d+\Z")
facts: dict = {"kernel": os.uname().release}


def step(name: str, **kv) -> None:
    facts.update(kv)
    print(f"[{time.monotonic():9.2f}] {name} {kv if kv else ''}", flush=True)


def until(cond, what: str, timeout: float = WAIT):
    return common.until(cond, what, timeout, context=lambda: f"; facts so far: {json.dumps(facts)}")


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = pifarm(list(args))
    print(f"$ pifarm {' '.join(args)} -> {rc}\n{out.getvalue()}", flush=True)
    return rc, out.getvalue()


def config(path: Path, data: Path, addresses, cntlid: tuple[int, int]) -> Path:
    path.write_text(f'[registry]\ndata_dir = "{data}"\n\n[target]\nconfigfs_root = "/sys/kernel/config/nvmet"\n'
                    f'addresses = {json.dumps(list(addresses))}\nsubsystem_nqn = "{NQN}"\n'
                    f'cntlid_min = {cntlid[0]}\ncntlid_max = {cntlid[1]}\n')
    return path


def cntlid_range() -> list[str]:
    s = Path("/sys/kernel/config/nvmet/subsystems") / NQN
    return [attr(s / "attr_cntlid_min"), attr(s / "attr_cntlid_max")]


def attr(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def paths(head: str) -> dict[str, dict]:
    """The head's per-path devices: controller, its address and state, ANA state, sectors read
    so far. Head nvmeXnY's paths are the hidden nvmeXcZnY (6.1 has no multipath/ links yet)."""
    out = {}
    x, y = re.match(r"^nvme(\d+)n(\d+)\Z", head).groups()
    for name in sorted(os.listdir("/sys/block")):
        m = re.fullmatch(rf"nvme{x}c(\d+)n{y}", name)
        if not m:
            continue
        c = Path("/sys/class/nvme") / f"nvme{m.group(1)}"
        stat = attr(Path("/sys/block") / name / "stat").split()
        address = dict(kv.split("=", 1) for kv in attr(c / "address").split(",") if "=" in kv)
        out[name] = {"ctrl": c.name, "traddr": address.get("traddr", ""), "state": attr(c / "state"),
                     "ana": attr(Path("/sys/block") / name / "ana_state"),
                     "sectors_read": int(stat[2]) if len(stat) > 2 else -1}
    return out


def verify(dev: str) -> int:
    """pifarm's verification routine over every blob of the volume, from the device itself
    (the page cache dropped first, so the bytes come over the fabric)."""
    Path("/proc/sys/vm/drop_caches").write_text("3")
    with VolumeReader.from_file(dev) as r:
        for _path, digest, _off, _size in r.entries:
            r.verify_blob(digest)
        return len(r.entries)


def read_delta(head: str, dev: str) -> tuple[int, dict[str, int]]:
    before = {k: v["sectors_read"] for k, v in paths(head).items()}
    n = verify(dev)
    after = {k: v["sectors_read"] for k, v in paths(head).items()}
    return n, {k: after[k] - before.get(k, 0) for k in after}


def list_subsys_addresses(text: str) -> list[str]:
    """The path addresses `nvme list-subsys -o json` (nvme-cli 2.x) shows for our subsystem."""
    doc = json.loads(text)
    hosts = doc if isinstance(doc, list) else [doc]
    return sorted(p.get("Address", "") for h in hosts for s in h.get("Subsystems", [])
                  if s.get("NQN") == NQN for p in s.get("Paths", []))


def registry_nsid(doc: dict, digest: str):
    """The nsid the signed snapshot gives the version with this manifest digest."""
    for entry in doc["signed"]["models"].values():
        for v in entry["versions"]:
            if v["manifest_digest"] == digest:
                return v.get("nsid")
    return None


def main() -> None:
    step("start", multipath_param=attr(Path("/sys/module/nvme_core/parameters/multipath")))
    work = Path(tempfile.mkdtemp(prefix="multipath-", dir=SCRATCH))
    data, model = work / "agg", work / "model"
    model.mkdir()
    (model / "config.json").write_text('{"layers": 3}')
    with Registry.open(data) as reg:
        for _ in range(3):  # v1 and v2 retired below: the served version's nsid is 3, not 1
            (model / "weights.bin").write_bytes(os.urandom(400_000))
            m, _ = reg.publish(model, "mobilenet", format="raw")
        reg.retire("mobilenet", 1)
        reg.retire("mobilenet", 2)
        doc = reg.snapshot_document()
    step("published", registry_nsid=registry_nsid(doc, m.digest), expect_uuid=str(namespace_uuid(m.digest)),
         expect_nguid=namespace_nguid(m.digest).hex())

    node = ensure_identity("/tmp/node-identity")
    # a controller id range of this aggregator's own (another one would take a disjoint range)
    cfg = config(work / "aggregator.toml", data, ADDRS, (1000, 1999))
    cli("target", "allow-host", node.hostnqn, "--no-apply", "--config", str(cfg))
    rc, out = cli("target", "apply", "--config", str(cfg))
    step("applied", apply_rc=rc, ports_linked=sorted(p.name for p in Path("/sys/kernel/config/nvmet/ports").iterdir()
                                                      if (p / "subsystems" / NQN).is_symlink()))

    # the node connects to each "aggregator" (one attacher per address, as with two sources)
    attachers = [KernelAttacher(AttachSettings(a, 4420, ctrl_loss_tmo=600, reconnect_delay=1, command_timeout=90), node)
                 for a in ADDRS]
    index = NamespaceIndex()
    index.start()
    results = [a.attach_once() for a in attachers]
    step("attached", attach_states=[r.state for r in results], attach_errors=[r.error for r in results],
         controllers=[dict(a.controllers()) for a in attachers], cntlid_range=cntlid_range(),
         cntlids=[int(attr(Path("/sys/class/nvme") / c / "cntlid") or 0) for a in attachers for c in a.controllers().values()])
    ns = index.wait_for(m.digest, WAIT)
    if ns is None:
        raise SystemExit(f"no namespace for the volume; facts so far: {json.dumps(facts)}")
    until(lambda: len(paths(ns.name)) == 2, "two paths under the head")
    subsys = Path("/sys/block") / ns.name / "device"
    mp = subprocess.run(["nvme", "list-subsys", "-o", "json"], capture_output=True, text=True, timeout=60)
    step("namespace", head=ns.name, head_dev_exists=ns.dev.exists(), head_device_link=os.readlink(subsys),
         matching=[n.name for n in index.namespaces() if n.matches(m.digest)],
         hidden_paths=sorted(b for b in os.listdir("/sys/block") if _PATH.match(b)),
         host_nsid=ns.nsid, host_uuid=str(ns.uuid), host_nguid=ns.nguid, host_subsysnqn=ns.subsysnqn,
         paths_before=paths(ns.name),
         list_subsys=list_subsys_addresses(mp.stdout) if mp.returncode == 0 else [mp.stdout + mp.stderr])

    # round-robin (Debian's default is numa: one path carries everything) so a read uses both
    subsys_dir = next(d for d in Path("/sys/class/nvme-subsystem").iterdir() if attr(d / "subsysnqn") == NQN)
    (subsys_dir / "iopolicy").write_text("round-robin")
    n, delta = read_delta(ns.name, str(ns.dev))
    step("read over both", iopolicy=attr(subsys_dir / "iopolicy"), verified_both=n, read_both=delta)

    # one "aggregator" goes: port 2 removed by pifarm's exporter (and the cntlid range moved up
    # past its maximum: the order of the two writes matters to the kernel)
    rc, out = cli("target", "apply", "--config", str(config(work / "one.toml", data, ADDRS[:1], (2000, 2999))))
    gone = attachers[1].controllers().get(NQN, "")
    until(lambda: attachers[1].controller_state(gone) not in ("live", "gone"), "the second path to leave live")
    n, delta = read_delta(ns.name, str(ns.dev))
    step("port removed", apply_one_rc=rc, cntlid_range_after=cntlid_range(), apply_one_steps=[ln for ln in out.splitlines() if ln.startswith("[")],
         removed_ctrl=gone, verified_one=n, read_one=delta, paths_after=paths(ns.name),
         head_after=[x.name for x in index.namespaces() if x.matches(m.digest)],
         controllers_after=[dict(a.controllers()) for a in attachers])
    index.stop()
    print(json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()

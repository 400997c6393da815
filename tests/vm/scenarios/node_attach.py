"""Issue 6 in the VM: real nvmet target + real kernel nvme-tcp host over loopback, driven by the
node's own modules. Run as root inside the vm tier (tests/vm/test_node_attach.py); prints one
JSON document (the facts) on the last line; the pytest side asserts on it.

    identity written once -> attach (unreachable, then nothing-offered, then live) -> namespace
    found by UUID through a kernel uevent -> blobs read from the block device, verified into the
    cache -> a new version's namespace picked up without reconnecting -> a blob altered on the
    target served by HTTP instead and the volume reported -> target port removed: HTTP serves,
    connections kept, path unreachable -> port back: NVMe path live and readable again.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the project root (the harness runs scripts there)

from pifarm.cache.store import Cache  # noqa: E402
from pifarm.initiator.blockdev_source import make_source  # noqa: E402
from pifarm.initiator.chain import Deadlined  # noqa: E402
from pifarm.initiator.http_source import HttpSource  # noqa: E402
from pifarm.initiator.identity import ensure_identity  # noqa: E402
from pifarm.initiator.settings import SourceContext, SourceSpec  # noqa: E402
from pifarm.signed.integrity import BlobRef, digest_bytes  # noqa: E402
from pifarm.signed.manifest import namespace_nguid, namespace_uuid  # noqa: E402
from pifarm.signed.signing import SigningKey  # noqa: E402
from tests.initiator_kernel.helpers import build_volume, flip_byte, model_files, trusted  # noqa: E402
from tests.vm.scenarios import common  # noqa: E402

C = Path("/sys/kernel/config/nvmet")
NQN = "nqn.2024-01.io.pifarm:vm-aggregator"
SCRATCH = Path(os.environ.get("PIFARM_VM_SCRATCH", "/scratch"))
WAIT = 60.0  # bound on every wait below; TCG is slow, a real Pi much faster
facts: dict = {"steps": []}


def step(name: str, **kv) -> None:
    facts["steps"].append(name)
    facts.update(kv)
    print(f"[{time.monotonic():9.2f}] {name} {kv if kv else ''}", flush=True)


def w(path: Path, value: str) -> None:
    path.write_text(value)


def export(nsid: int, volume: Path, digest: str) -> None:
    ns = C / "subsystems" / NQN / "namespaces" / str(nsid)
    ns.mkdir()
    w(ns / "device_path", str(volume))
    w(ns / "device_uuid", str(namespace_uuid(digest)))
    w(ns / "device_nguid", str(__import__("uuid").UUID(bytes=namespace_nguid(digest))))
    w(ns / "enable", "1")


def port_up() -> None:
    p = C / "ports" / "1"
    p.mkdir()
    for k, v in (("addr_trtype", "tcp"), ("addr_adrfam", "ipv4"), ("addr_traddr", "127.0.0.1"), ("addr_trsvcid", "4420")):
        w(p / k, v)
    if (C / "subsystems" / NQN).exists():
        os.symlink(C / "subsystems" / NQN, p / "subsystems" / NQN)


def port_down() -> None:
    p = C / "ports" / "1"
    link = p / "subsystems" / NQN
    if link.is_symlink():
        link.unlink()
    p.rmdir()


def until(cond, what: str, timeout: float = WAIT):
    return common.until(cond, what, timeout, context=lambda: f"; facts so far: {json.dumps(facts)}")


def blob_server(root: Path) -> ThreadingHTTPServer:
    """A plain HTTP server with the aggregator's blob URL layout, as the next source."""
    (root / "v1" / "blobs").mkdir(parents=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    srv.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main() -> None:
    work = SCRATCH / "node-attach"
    work.mkdir()
    key = SigningKey.generate()
    v1 = build_volume(work / "m-1.vol", key, "m", 1, model_files(1))
    v2 = build_volume(work / "m-2.vol", key, "m", 2, model_files(2, (5000, 777_777)))
    v3 = build_volume(work / "m-3.vol", key, "m", 3, model_files(3, (3, 1_500_000)))
    web = blob_server(work / "web")
    for v in (v1, v2, v3):
        for data in v.files.values():
            (work / "web" / "v1" / "blobs" / digest_bytes(data)).write_bytes(data)

    # -- identity, written once
    first = ensure_identity("/etc/nvme")
    again = ensure_identity("/etc/nvme")
    step("identity", hostnqn=first.hostnqn, identity_created=list(first.created),
         identity_again_created=list(again.created), identity_stable=(first.hostnqn, first.hostid) == (again.hostnqn, again.hostid),
         hostnqn_file=Path("/etc/nvme/hostnqn").read_text().strip())

    # -- the source starts before the target exists: unreachable, and the node keeps going
    ctx = SourceContext(trusted=trusted(key), state_dir=Path("/tmp/node/state"), host_identity_path=Path("/etc/nvme"))
    spec = SourceSpec("nvme-kernel", deadline=30, address="127.0.0.1:4420",
                      options={"ctrl_loss_tmo": 120, "reconnect_delay": 1, "read_timeout": 4, "rediscover_interval": 1})
    src = make_source(spec, ctx)
    until(lambda: src.attacher.last.error, "the first attach round")
    step("no target", state_without_target=src.path_state, error_without_target=src.attacher.last.error[:120])

    # -- target up, this host not allowed yet: discovery answers, offers nothing
    (C / "subsystems" / NQN).mkdir()
    w(C / "subsystems" / NQN / "attr_allow_any_host", "0")
    export(1, v1.path, v1.digest)
    port_up()
    until(lambda: src.path_state == "nothing-offered", "nothing-offered")
    step("not allowed", state_not_allowed=src.path_state, devices_not_allowed=sorted(os.listdir("/sys/block")))

    # -- allowed: connect, the namespace found by UUID through a real uevent
    host = C / "hosts" / first.hostnqn
    host.mkdir()
    os.symlink(host, C / "subsystems" / NQN / "allowed_hosts" / first.hostnqn)
    until(lambda: src.path_state == "live", "live")
    ns1 = src.index.wait_for(v1.digest, WAIT)
    ctrls = dict(src.attacher.controllers())
    step("live", state_allowed=src.path_state, ns1=ns1.name if ns1 else None,
         ns1_uuid=str(ns1.uuid) if ns1 else None, expect_uuid1=str(namespace_uuid(v1.digest)),
         ns1_via_uevent=bool(ns1 and ns1.name in src.index.via_uevent), controllers_first=ctrls)

    # -- read from the block device, verified into the cache
    cache = Cache("/tmp/node/cache")
    http = HttpSource(f"http://127.0.0.1:{web.server_address[1]}")
    chain = [Deadlined(src, 30), Deadlined(http, 30)]

    def install(v):
        out = {}
        for path, data in v.files.items():
            res = cache.install(BlobRef(digest_bytes(data), len(data)), chain)
            out[path] = [res.source, Path(res.path).read_bytes() == data]
        return out

    step("install v1", v1_installed=install(v1))

    # -- a new version published while connected; one of its blobs altered on the target
    victim = v2.files["part1.bin"]
    flip_byte(v2.path, _blob_offset(v2.path, digest_bytes(victim)) + 4242)
    export(2, v2.path, v2.digest)
    ns2 = src.index.wait_for(v2.digest, WAIT)
    until(lambda: any(d["version"] == 2 for d in src.status()["volumes"]), "volume v2 served")
    step("published v2", ns2=ns2.name if ns2 else None, ns2_via_uevent=bool(ns2 and ns2.name in src.index.via_uevent),
         controllers_after_v2=dict(src.attacher.controllers()),
         ctrl_state_after_v2={c: src.attacher.controller_state(c) for c in src.attacher.controllers().values()})
    step("install v2", v2_installed=install(v2), corrupt=dict(src.corrupt),
         victim_digest=digest_bytes(victim),
         status_file_corrupt=list(json.loads(Path("/tmp/node/state/nvme.json").read_text())["corrupt"]))

    # -- v3 exported, then the port goes away: HTTP serves, connections are kept
    export(3, v3.path, v3.digest)
    until(lambda: src.index.find(v3.digest), "namespace of v3")
    until(lambda: any(d["version"] == 3 for d in src.status()["volumes"]), "volume v3 served")
    port_down()
    until(lambda: src.path_state == "unreachable", "unreachable after port removal")
    step("port removed", state_port_down=src.path_state, controllers_port_down=dict(src.attacher.controllers()),
         ctrl_state_port_down={c: src.attacher.controller_state(c) for c in src.attacher.controllers().values()})
    step("install v3", v3_installed=install(v3))

    # -- port back: the kernel reconnects by itself, the NVMe path is live and readable again
    port_up()
    until(lambda: src.path_state == "live", "live after the port came back")
    ctrl = next(iter(src.attacher.controllers().values()))
    until(lambda: src.attacher.controller_state(ctrl) == "live", "controller live again")
    data = v3.files["part1.bin"]
    ref = BlobRef(digest_bytes(data), len(data))

    def read_back():
        try:
            return b"".join(src.chunks(ref)) == data
        except Exception as e:  # a stuck read from the outage may still be draining
            print("read after reconnect:", e, flush=True)
            return False

    step("port back", state_port_back=src.path_state, controllers_port_back=dict(src.attacher.controllers()),
         read_after_reconnect=bool(until(read_back, "a read after reconnect")))
    src.close()
    web.shutdown()
    print(json.dumps(facts, sort_keys=True))


def _blob_offset(path: Path, digest: str) -> int:
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(path) as r:
        return r.extent(digest)[0]


if __name__ == "__main__":
    main()

"""Userspace target behaviour a host relies on: keep-alive expiry, namespace-change events,
and the layering rules (the node side never imports the target)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import socket
from pathlib import Path

import pifarm
from pifarm import nvmewire as w
from pifarm.target.userspace import NamespaceExport, SubsystemExport, ThreadedTarget
from tests.nvme.conftest import HOSTNQN, SUBNQN, make_volume, target_config

PKG = Path(pifarm.__file__).parent


class RawHost:
    """A host written directly against the codec, for exchanges the initiator never makes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.codec = w.Codec(w.Role.HOST)
        self.send(w.ICReq())
        assert isinstance(self.recv(), w.ICResp)

    def send(self, pdu) -> None:
        self.sock.sendall(self.codec.encode(pdu))

    def recv(self):
        while (p := self.codec.next_pdu()) is w.NEED_DATA:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.codec.feed(data)
        return p

    def command(self, sqe, data=b""):
        self.send(w.CapsuleCmd(sqe, data))
        out = []
        while not isinstance(p := self.recv(), w.CapsuleResp):
            assert p is not None, "target closed the queue"
            out.append(p)
        return p.cqe, out

    def admin_connect(self, kato_ms: int) -> None:
        import uuid

        sqe, data = w.connect_cmd(0, 31, kato_ms, w.ConnectData(uuid.uuid4(), 0xFFFF, SUBNQN, HOSTNQN))
        assert self.command(sqe, data)[0].status == 0
        self.command(w.property_set(w.Prop.CC, 0x460001))


def test_admin_queue_without_keep_alive_is_dropped_after_kato(volume):
    cfg = dataclasses.replace(target_config(volume), kato_grace=0.1)
    with ThreadedTarget(cfg) as t:
        h = RawHost(t.port)
        h.admin_connect(kato_ms=100)
        assert len(t.target.controllers.ctrls) == 1
        h.sock.settimeout(10)
        assert h.sock.recv(1) == b""  # target closed the silent queue (bounded by the 10 s timeout)
        for _ in range(200):
            if not t.target.controllers.ctrls:
                break
            asyncio.run(asyncio.sleep(0.01))
        assert t.target.controllers.ctrls == {}


def test_new_namespace_raises_an_async_event_and_the_changed_list(tmp_path):
    a = make_volume(tmp_path / "a", "alpha", 1, (10,))
    b = make_volume(tmp_path / "b", "beta", 1, (10,))
    ns_a, ns_b = NamespaceExport.from_volume(1, a.path), NamespaceExport.from_volume(2, b.path)
    cfg = dataclasses.replace(target_config(a), subsystems=(SubsystemExport(SUBNQN, (ns_a,), frozenset({HOSTNQN})),))
    with ThreadedTarget(cfg) as t:
        h = RawHost(t.port)
        h.admin_connect(kato_ms=0)
        ctrl = w.IdentifyController.unpack(h.command(w.identify(w.Cns.CONTROLLER))[1][0].data)
        assert ctrl.oaes & 0x100
        assert h.command(w.set_features(w.Feature.ASYNC_EVENT_CONFIG, 0x900))[0].dw0 == 0x100
        h.send(w.CapsuleCmd(w.Sqe(w.Opcode.ASYNC_EVENT, cid=31)))
        new = dataclasses.replace(cfg, subsystems=(SubsystemExport(SUBNQN, (ns_a, ns_b), frozenset({HOSTNQN})),))
        t.loop.call_soon_threadsafe(t.target.set_config, new)
        aen = h.recv()
        assert aen.cqe.cid == 31 and aen.cqe.dw0 == 0x00040002
        cqe, [log] = h.command(w.get_log_page(w.Lid.CHANGED_NS, 4096))
        assert bytes(log.data[:4]) == b"\xff\xff\xff\xff"
        cqe, [lst] = h.command(w.identify(w.Cns.ACTIVE_NS_LIST))
        assert w.unpack_ns_list(lst.data) == [1, 2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_public_api_is_pinned():
    import pifarm.initiator.nvme_tcp as ini
    import pifarm.target.userspace as tgt

    assert set(ini.__all__) == {"AUTH_MESSAGE", "ConnectParams", "Controller", "NamespaceInfo", "NvmeTcpClient",
                                "host_id_for", "parse_address"}
    assert {"serve", "ThreadedTarget", "UserspaceTarget", "TargetConfig", "SubsystemExport", "NamespaceExport",
            "VolumeDirectory"} <= set(tgt.__all__)
    assert {"Codec", "NEED_DATA", "ICReq", "ICResp", "CapsuleCmd", "CapsuleResp", "C2HData", "H2CData", "R2T",
            "TermReq", "LocalProtocolError", "RemoteProtocolError", "NvmeStatusError"} <= set(w.__all__)
    for mod in (ini, tgt, w):
        assert all(hasattr(mod, n) for n in mod.__all__)


def test_io_queues_outlive_idle_periods_but_not_their_controller(volume, monkeypatch):
    import uuid

    from pifarm.target.userspace import _server

    monkeypatch.setattr(_server, "IO_QUEUE_CHECK", 0.05)
    cfg = dataclasses.replace(target_config(volume), idle_timeout=0.1)
    with ThreadedTarget(cfg) as t:
        admin = RawHost(t.port)
        admin.admin_connect(kato_ms=10000)  # the admin queue is kept by keep-alive, not idle_timeout
        [cntlid] = t.target.controllers.ctrls
        io = RawHost(t.port)
        sqe, data = w.connect_cmd(1, 31, 0, w.ConnectData(uuid.uuid4(), cntlid, SUBNQN, HOSTNQN))
        assert io.command(sqe, data)[0].status == 0
        asyncio.run(asyncio.sleep(0.5))  # idle far longer than idle_timeout: the I/O queue stays
        cqe, [c2h] = io.command(w.read_cmd(1, 0, 1, 4096))
        assert cqe.status == 0 and bytes(c2h.data) == volume.path.read_bytes()[:4096]
        admin.sock.close()  # controller gone: its I/O queue follows
        io.sock.settimeout(10)
        assert io.sock.recv(1) == b""


def test_stop_returns_when_a_queue_ended_inside_its_last_await(volume):
    """stop() cancels the queues until none is left; one whose cancellation landed in its final
    wait_closed() ended without leaving the set, and stop() then spun for ever (a CI teardown hung
    60 s). A finished task in the set must not hold stop() up."""
    t = ThreadedTarget(target_config(volume)).start()

    async def ended() -> None:
        pass

    async def leave_a_finished_task() -> None:
        task = t.loop.create_task(ended())
        await task
        t.target._conns.add(task)  # what the cancelled-in-wait_closed queue left behind

    asyncio.run_coroutine_threadsafe(leave_a_finished_task(), t.loop).result(timeout=30)
    asyncio.run_coroutine_threadsafe(t.target.stop(), t.loop).result(timeout=30)
    t.stop()

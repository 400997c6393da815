"""Issue 11, finding 1: what a host on the LAN (allowed or not: the discovery controller takes
any host NQN) can make the userspace target hold in memory. Every limit is configurable and
counted when it bites (`Controllers.limits`, Prometheus `pifarm_nvme_target_limit_hits_total`)."""

from __future__ import annotations

import dataclasses
import socket
import uuid

from pifarm import nvmewire as w
from pifarm.nvmewire import status as st
from pifarm.target.userspace import ThreadedTarget
from tests.nvme.conftest import OTHER_HOST, target_config
from tests.nvme.test_target_behaviour import RawHost
from tests.support.wait import wait_for


def discovery_host(port: int) -> RawHost:
    """A host nobody allowed, on the discovery controller (which accepts any host NQN)."""
    h = RawHost(port)
    sqe, data = w.connect_cmd(0, 31, 0, w.ConnectData(uuid.uuid4(), 0xFFFF, w.DISCOVERY_NQN, OTHER_HOST))
    assert h.command(sqe, data)[0].status == 0
    h.command(w.property_set(w.Prop.CC, 0x460001))
    return h


def test_reply_is_never_larger_than_mdts(volume):
    with ThreadedTarget(target_config(volume)) as t:
        h = discovery_host(t.port)
        cqe, data = h.command(w.identify(w.Cns.CONTROLLER, length=64 << 20))
        assert cqe.status & 0x7FF == st.SGL_INVALID_DATA and data == []
        assert t.target.controllers.limits.counts["transfer"] == 1
        cqe, [ident] = h.command(w.identify(w.Cns.CONTROLLER))  # the queue still works
        assert cqe.status == 0 and len(ident.data) == 4096


def test_log_page_length_is_capped_whatever_the_sgl_says(volume):
    with ThreadedTarget(target_config(volume)) as t:
        h = discovery_host(t.port)
        numd = (256 << 20) // 4 - 1  # 256 MiB asked in the command, 4 KiB in the SGL
        sqe = w.Sqe(w.Opcode.GET_LOG_PAGE, cdw10=w.Lid.DISCOVERY | (numd & 0xFFFF) << 16, cdw11=numd >> 16,
                    sgl=w.Sgl(0, 4096))
        cqe, data = h.command(sqe)
        assert cqe.status & 0x7FF == st.INVALID_FIELD and data == []
        assert t.target.controllers.limits.counts["log_page"] == 1
        cqe, [page] = h.command(w.get_log_page(w.Lid.DISCOVERY, 4096))
        assert cqe.status == 0 and len(page.data) == 4096


def test_connections_beyond_the_cap_are_closed(volume):
    cfg = dataclasses.replace(target_config(volume), max_connections=2)
    with ThreadedTarget(cfg) as t:
        first, second = RawHost(t.port), RawHost(t.port)  # both get their ICResp
        third = socket.create_connection(("127.0.0.1", t.port), timeout=30)
        third.sendall(w.Codec(w.Role.HOST).encode(w.ICReq()))
        try:
            assert third.recv(1) == b""
        except ConnectionResetError:
            pass  # closed with RST: equally refused
        assert t.target.controllers.limits.counts["connections"] == 1
        first.sock.close()
        wait_for(lambda: len(t.target._conns) < 2, "the first queue to close", 60)
        RawHost(t.port)  # a freed slot is usable again
        second.sock.close()


def test_a_host_that_never_reads_cannot_pile_up_replies(volume):
    cfg = dataclasses.replace(target_config(volume), max_queued=64 << 10, send_timeout=1.0)
    with ThreadedTarget(cfg) as t:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, fixed: the kernel absorbs little
        s.settimeout(30)
        s.connect(("127.0.0.1", t.port))
        codec = w.Codec(w.Role.HOST)
        s.sendall(codec.encode(w.ICReq()))
        while codec.next_pdu() is w.NEED_DATA:  # the ICResp
            codec.feed(s.recv(4096))
        sqe, data = w.connect_cmd(0, 31, 0, w.ConnectData(uuid.uuid4(), 0xFFFF, w.DISCOVERY_NQN, OTHER_HOST))
        s.sendall(codec.encode(w.CapsuleCmd(sqe, data)) + codec.encode(w.CapsuleCmd(w.property_set(w.Prop.CC, 0x460001))))
        burst = b"".join(codec.encode(w.CapsuleCmd(w.Sqe(w.Opcode.IDENTIFY, cid=i % 60000, cdw10=w.Cns.CONTROLLER,
                                                         sgl=w.Sgl(0, 1 << 20))))
                         for i in range(4000))  # 4000 replies of 1 MiB each, never read
        s.settimeout(5)
        try:
            s.sendall(burst)
        except (socket.timeout, ConnectionError):
            pass  # the target stopped reading us: that is the point
        wait_for(lambda: t.target.controllers.limits.counts["send_timeout"] >= 1, "the silent reader dropped", 60)
        # bounded: the high-water mark plus one reply (discovery Identify is answered, not refused)
        assert t.target.peak_queued <= cfg.max_queued + cfg.max_transfer + 4096
        s.close()


def test_limits_are_validated():
    import pytest

    from pifarm.errors import UsageError
    from pifarm.target.userspace import TargetConfig

    for bad in ({"mdts": 0}, {"mdts": 13}, {"max_connections": 0}, {"max_queued": 0}, {"send_timeout": 0}):
        with pytest.raises(UsageError):
            TargetConfig((), **bad)

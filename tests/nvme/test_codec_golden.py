"""The codec against captures of the Linux kernel host talking to the Linux kernel target
(tests/nvme/data, documented in tests/nvme/data/README.md)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from pifarm import nvmewire as w
from tests.nvme.pcap import read_streams

DATA = Path(__file__).parent / "data"
SUBNQN = "nqn.2024-01.io.example:nvme-tcp-golden"
GOOD = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
REFUSED = "nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555"
NS_UUID = uuid.UUID("8c7bd6a1-0000-4000-8000-000000000001")


def drain(codec: w.Codec) -> list:
    out = []
    while (p := codec.next_pdu()) is not w.NEED_DATA:
        out.append(p)
    return out


def decode_conn(conn, chunk: int | None = None):
    """Decode one TCP connection: (host->ctrl PDUs, ctrl->host PDUs, host codec, ctrl codec)."""
    host, ctrl = w.Codec(w.Role.HOST, max_data=1 << 20), w.Codec(w.Role.CONTROLLER, max_data=1 << 20)
    up, down = bytes(conn.to_ctrl), bytes(conn.to_host)
    ic_req, ic_resp = up[:128], down[:128]
    ctrl.feed(ic_req)
    req = ctrl.next_pdu()
    assert isinstance(req, w.ICReq)
    host.encode(req)  # move the host codec past its ICReq, as the real host did
    host.feed(ic_resp)
    resp = host.next_pdu()
    assert isinstance(resp, w.ICResp)
    ctrl.encode(resp)
    ins, outs = [req], [resp]
    for codec, stream, sink in ((ctrl, up[128:], ins), (host, down[128:], outs)):
        step = chunk or len(stream) or 1
        for i in range(0, len(stream), step):
            codec.feed(stream[i:i + step])
            sink.extend(drain(codec))
        assert codec.buffered == 0
    return ins, outs


def all_pdus(name: str):
    conns = read_streams(DATA / f"{name}.pcap")
    return [decode_conn(c) for c in conns]


def kinds(pdus) -> dict[str, int]:
    names = {w.ICReq: "ICReq", w.ICResp: "ICResp", w.CapsuleCmd: "CapsuleCmd", w.CapsuleResp: "CapsuleResp",
             w.C2HData: "C2HData"}
    out: dict[str, int] = {}
    for p in pdus:
        out[names[type(p)]] = out.get(names[type(p)], 0) + 1
    return out


@pytest.mark.parametrize("name,totals", [
    ("discovery", {"ICReq": 1, "ICResp": 1, "CapsuleCmd": 16, "CapsuleResp": 16, "C2HData": 4}),
    ("connect-read", {"ICReq": 3, "ICResp": 3, "CapsuleCmd": 38, "CapsuleResp": 38, "C2HData": 23}),
    ("connect-read-digest", {"ICReq": 3, "ICResp": 3, "CapsuleCmd": 38, "CapsuleResp": 38, "C2HData": 23}),
    ("refused-host", {"ICReq": 1, "ICResp": 1, "CapsuleCmd": 1, "CapsuleResp": 1}),
])
def test_capture_decodes_to_the_documented_pdu_totals(name, totals):
    got: dict[str, int] = {}
    for ins, outs in all_pdus(name):
        for k, v in kinds(ins + outs).items():
            got[k] = got.get(k, 0) + v
    assert got == totals


@pytest.mark.parametrize("name", ["discovery", "connect-read", "connect-read-digest", "refused-host"])
def test_reencoding_every_pdu_reproduces_the_kernel_bytes(name):
    for conn in read_streams(DATA / f"{name}.pcap"):
        ins, outs = decode_conn(conn)
        host, ctrl = w.Codec(w.Role.HOST), w.Codec(w.Role.CONTROLLER)
        up = bytearray(host.encode(ins[0]))
        ctrl.feed(bytes(up))
        ctrl.next_pdu()
        down = bytearray(ctrl.encode(outs[0]))
        host.feed(bytes(down))
        host.next_pdu()
        up += b"".join(host.encode(p) for p in ins[1:])
        down += b"".join(ctrl.encode(p) for p in outs[1:])
        assert bytes(up) == bytes(conn.to_ctrl)
        assert bytes(down) == bytes(conn.to_host)


def test_discovery_exchange_fields():
    [(ins, outs)] = all_pdus("discovery")
    connect = ins[1]
    assert connect.sqe.opcode == w.Opcode.FABRICS and connect.sqe.fctype == w.FcType.CONNECT
    assert connect.sqe.sgl.type == w.SGL_INCAPSULE and connect.sqe.sgl.length == 1024
    assert w.connect_fields(connect.sqe) == (0, 0, 31, 0)
    cd = w.ConnectData.unpack(connect.data)
    assert (cd.subnqn, cd.hostnqn, cd.cntlid) == (w.DISCOVERY_NQN, GOOD, 0xFFFF)
    assert cd.hostid == uuid.UUID("11111111-2222-3333-4444-555555555555")
    resps = [p for p in outs if isinstance(p, w.CapsuleResp)]
    assert resps[0].cqe.dw0 == 1  # cntlid
    assert resps[1].cqe.result64 == 0x00000820_0F0003FF  # CAP
    props = [p.sqe for p in ins if isinstance(p, w.CapsuleCmd) and p.sqe.opcode == w.Opcode.FABRICS][1:]
    assert props[1] == w.property_set(w.Prop.CC, 0x460060).with_cid(props[1].cid)
    assert props[0] == w.property_get(w.Prop.CAP, True).with_cid(props[0].cid)
    data = [p for p in outs if isinstance(p, w.C2HData)]
    ctrl = w.IdentifyController.unpack(data[0].data)
    assert (ctrl.subnqn, ctrl.cntlid, ctrl.ver, ctrl.firmware) == (w.DISCOVERY_NQN, 1, 0x10300, "6.1.0-56")
    assert ctrl.cntrltype == 2
    log = w.DiscoveryLog.unpack(data[3].data)
    assert (log.genctr, log.numrec, len(log.entries)) == (2, 2, 2)
    assert {e.subnqn for e in log.entries} == {w.DISCOVERY_NQN, SUBNQN}
    nvm = next(e for e in log.entries if e.subnqn == SUBNQN)
    assert (nvm.traddr, nvm.trsvcid, nvm.trtype, nvm.adrfam, nvm.subtype) == ("127.0.0.1", "4420", 3, 1, 2)
    lid, length, _ = w.log_page_fields(ins[-3].sqe)
    assert (lid, length) == (0x70, 3072)
    # The outstanding AER is failed with Internal Error + DNR after the host's FIN.
    assert resps[-1].cqe.cid == 31 and resps[-1].cqe.status == 0x4006


@pytest.mark.parametrize("name", ["connect-read", "connect-read-digest"])
def test_namespace_identity_and_read_data(name):
    conns = all_pdus(name)
    admin = next(outs for ins, outs in conns if w.connect_fields(ins[1].sqe)[1] == 0)
    admin_in = next(ins for ins, outs in conns if w.connect_fields(ins[1].sqe)[1] == 0)
    by_cid = {p.sqe.cid: p.sqe for p in admin_in if isinstance(p, w.CapsuleCmd)}
    desc = ns = None
    for p in admin:
        if isinstance(p, w.C2HData):
            sqe = by_cid[p.cccid]
            if sqe.opcode == w.Opcode.IDENTIFY and sqe.cdw10 == w.Cns.NS_DESCRIPTORS:
                desc = w.NsDescriptors.unpack(p.data)
            if sqe.opcode == w.Opcode.IDENTIFY and sqe.cdw10 == w.Cns.NAMESPACE:
                ns = w.IdentifyNamespace.unpack(p.data)
    assert desc.uuid == NS_UUID and desc.nguid == bytes.fromhex("8c7bd6a1000040008000000000000001")
    assert (ns.nsze, ns.lba_size, ns.size_bytes) == (256, 4096, 1 << 20)
    assert ns.nguid == desc.nguid
    # Reassemble the dd reads (8 x 128 KiB from slba 0) across both I/O queues.
    image = bytearray(1 << 20)
    for ins, outs in conns:
        cmds = {p.sqe.cid: p.sqe for p in ins if isinstance(p, w.CapsuleCmd)}
        for p in outs:
            if isinstance(p, w.C2HData) and cmds[p.cccid].opcode == w.Opcode.READ and w.connect_fields(ins[1].sqe)[1]:
                slba, nlb = w.rw_fields(cmds[p.cccid])
                assert len(p.data) == nlb * 4096
                image[slba * 4096 + p.offset: slba * 4096 + p.offset + len(p.data)] = p.data
    expected = bytes(i % 251 for i in range(1 << 20))
    assert hashlib.sha256(image).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_refused_host_status_reads_clearly():
    [(ins, outs)] = all_pdus("refused-host")
    assert w.ConnectData.unpack(ins[1].data).hostnqn == REFUSED
    cqe = outs[1].cqe
    assert (cqe.status, cqe.dw0) == (0x4184, 0x00010200)
    with pytest.raises(w.NvmeStatusError, match="host NQN is not allowed") as e:
        w.check_status(cqe.status, "connect to " + SUBNQN)
    assert e.value.dnr and e.value.code == 0x184


def test_byte_by_byte_feeding_gives_the_same_pdus():
    [conn] = read_streams(DATA / "discovery.pcap")
    assert decode_conn(conn, chunk=1) == decode_conn(conn)


def test_odd_sized_chunks_on_digest_capture_give_the_same_pdus():
    conns = read_streams(DATA / "connect-read-digest.pcap")
    for conn in conns:
        assert decode_conn(conn, chunk=4093) == decode_conn(conn)

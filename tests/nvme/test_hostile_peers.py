"""Protocol edge cases against real sockets: malformed PDUs, wrong lengths, digest mismatches,
a target that goes silent or closes mid-transfer. Each ends in a clear error, never a hang,
and nothing reaches the cache."""

from __future__ import annotations

import asyncio
import re
import struct

import pytest

from pifarm.cache.store import Cache
from pifarm.errors import ProtocolError, SourceError, SourceTimeout
from pifarm.initiator.nvme_tcp import ConnectParams, Controller, NvmeTcpClient
from pifarm.initiator.nvme_tcp.source import NvmeTcpUserspaceSource
from pifarm import nvmewire as w
from tests.nvme.conftest import HOSTNQN, SUBNQN
from tests.nvme.peers import Proxy, ScriptedTarget


def connect(port: int, **kw):
    return asyncio.run(Controller.connect(ConnectParams("127.0.0.1", port, SUBNQN, HOSTNQN, **kw)))


def ic_then(reply: bytes):
    def script(conn, srv):
        srv.recv_exact(conn, 128)
        conn.sendall(reply)
        srv.drain(conn)
    return script


def test_malformed_pdu_type_fails_clearly_and_sends_a_termination_request():
    with ScriptedTarget(ic_then(struct.pack("<BBBBI", 0x42, 0, 128, 0, 128) + bytes(120))) as srv:
        with pytest.raises(w.RemoteProtocolError, match="unknown NVMe/TCP PDU type 0x42"):
            connect(srv.port, timeout=5)
    assert srv.received[128] == w.PduType.H2C_TERM  # the host told the target why it gave up
    assert struct.unpack_from("<H", srv.received, 128 + 8)[0] == w.Fes.INVALID_HEADER_FIELD


def test_wrong_pdu_length_in_icresp():
    resp = bytearray(128)
    struct.pack_into("<BBBBI", resp, 0, w.PduType.ICRESP, 0, 128, 0, 4096)  # plen says 4096
    struct.pack_into("<HBBI", resp, 8, 0, 0, 0, 4 << 20)
    with ScriptedTarget(ic_then(bytes(resp))) as srv:
        with pytest.raises(w.RemoteProtocolError, match="ICRESP with plen 4096"):
            connect(srv.port, timeout=5)


def test_silent_target_times_out():
    with ScriptedTarget(lambda conn, srv: srv.drain(conn)) as srv:
        with pytest.raises(SourceTimeout, match="no answer to ICReq within 0.3 s"):
            connect(srv.port, timeout=0.3)


def test_nothing_listening_is_a_source_error():
    with ScriptedTarget(lambda conn, srv: None) as srv:
        port = srv.port
    with pytest.raises(SourceError, match="connect to 127.0.0.1"):
        connect(port, timeout=2)


def _first_blob_install(volume, port, tmp_path, **kw):
    client = NvmeTcpClient(ConnectParams("127.0.0.1", port, SUBNQN, HOSTNQN, timeout=5, **kw), retries=1, backoff=0.01)
    src = NvmeTcpUserspaceSource([client])
    cache = Cache(tmp_path / "cache")
    big = volume.manifest.files[0]
    try:
        with pytest.raises(SourceError) as e:
            cache.install(big.ref, [src])
    finally:
        src.close()
    assert not cache.has_blob(big.ref)
    assert [p for p in cache.layout.blobs.rglob("*") if p.is_file()] == []
    return str(e.value)


def _flip_after(threshold: int):
    def mutate(idx, pos, chunk):
        if pos <= threshold < pos + len(chunk):
            b = bytearray(chunk)
            b[threshold - pos] ^= 0x5A
            return bytes(b)
        return chunk
    return mutate


def test_data_digest_mismatch_is_caught_and_nothing_installed(target, volume, tmp_path):
    with Proxy(target.port, _flip_after(600_000)) as px:
        msg = _first_blob_install(volume, px.port, tmp_path, hdgst=True, ddgst=True)
    assert "data digest mismatch" in msg


def test_corruption_without_digests_is_caught_by_verification(target, volume, tmp_path):
    with Proxy(target.port, _flip_after(600_000)) as px:
        msg = _first_blob_install(volume, px.port, tmp_path)
    assert "hashes to" in msg  # the shared verifier, not the transport, caught it


def test_target_closing_mid_transfer(target, volume, tmp_path):
    def cut(idx, pos, chunk):
        return None if pos + len(chunk) > 700_000 else chunk

    with Proxy(target.port, cut) as px:
        msg = _first_blob_install(volume, px.port, tmp_path)
    assert re.search(r"closed|lost", msg), msg


def test_controller_termination_request_is_reported():
    def script(conn, srv):
        srv.recv_exact(conn, 128)
        conn.sendall(_icresp_then_term())
        srv.drain(conn)

    with ScriptedTarget(script) as srv:
        with pytest.raises(ProtocolError, match="target terminated the connection"):
            connect(srv.port, timeout=5)


def _icresp_then_term() -> bytes:
    c = w.Codec(w.Role.CONTROLLER)
    c.feed(w.Codec(w.Role.HOST).encode(w.ICReq()))
    c.next_pdu()
    return c.encode(w.ICResp()) + c.encode(w.TermReq(w.Fes.INVALID_HEADER_FIELD, 0, from_host=False))


def test_userspace_target_answers_garbage_with_a_termination_request(target):
    import socket

    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as s:
        s.sendall(w.Codec(w.Role.HOST).encode(w.ICReq()))
        assert len(s.recv(128, socket.MSG_WAITALL)) == 128
        s.sendall(struct.pack("<BBBBI", w.PduType.CAPSULE_CMD, 0, 99, 0, 99) + bytes(91))
        reply = s.recv(4096)
        assert reply[0] == w.PduType.C2H_TERM
        assert s.recv(4096) == b""  # and the target closed the queue


def test_a_dropped_connection_reconnects_and_resumes_where_it_stopped(target, volume, tmp_path):
    def cut_first_io_queue_once(idx, pos, chunk):
        return None if idx == 1 and pos + len(chunk) > 700_000 else chunk

    with Proxy(target.port, cut_first_io_queue_once) as px:
        client = NvmeTcpClient(ConnectParams("127.0.0.1", px.port, SUBNQN, HOSTNQN, timeout=5), retries=2, backoff=0.01)
        src = NvmeTcpUserspaceSource([client])
        try:
            big = volume.manifest.files[0]
            res = Cache(tmp_path / "cache").install(big.ref, [src])
        finally:
            src.close()
    assert res.path.read_bytes() == volume.blobs[big.digest]
    assert client.reconnects == 1

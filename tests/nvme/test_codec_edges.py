"""Codec behaviour on bad input and arbitrary stream splits (bytes in, PDUs out)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pifarm import nvmewire as w


def ready_pair(hd: bool = False, dd: bool = False) -> tuple[w.Codec, w.Codec]:
    host, ctrl = w.Codec(w.Role.HOST), w.Codec(w.Role.CONTROLLER)
    ctrl.feed(host.encode(w.ICReq(hdgst=hd, ddgst=dd)))
    req = ctrl.next_pdu()
    host.feed(ctrl.encode(w.ICResp(hdgst=req.hdgst, ddgst=req.ddgst)))
    assert isinstance(host.next_pdu(), w.ICResp)
    assert host.state is ctrl.state is w.State.READY
    return host, ctrl


def c2h(cid=5, data=b"abc" * 100) -> w.C2HData:
    return w.C2HData(cid, 0, data, last=True)


def test_host_cannot_send_a_command_before_the_ic_exchange():
    with pytest.raises(w.LocalProtocolError, match="cannot send CAPSULE_CMD in state idle"):
        w.Codec(w.Role.HOST).encode(w.CapsuleCmd(w.keep_alive()))


def test_receiving_a_pdu_of_the_wrong_direction_is_a_sequence_error_and_sticks():
    host, ctrl = ready_pair()
    host.feed(host.__class__(w.Role.HOST).encode(w.ICReq()))  # an ICReq arriving at a host
    with pytest.raises(w.RemoteProtocolError, match="cannot receive ICREQ") as e:
        host.next_pdu()
    assert e.value.fes == w.Fes.PDU_SEQUENCE_ERROR and host.state is w.State.ERROR
    with pytest.raises(w.LocalProtocolError, match="unusable after an earlier error"):
        host.next_pdu()
    # the one thing still allowed: telling the peer why we give up
    raw = host.encode(w.TermReq(e.value.fes, from_host=True))
    assert raw[0] == w.PduType.H2C_TERM and host.state is w.State.CLOSED


def test_unknown_pdu_type():
    host, _ = ready_pair()
    host.feed(struct.pack("<BBBBI", 0x42, 0, 24, 0, 24) + bytes(16))
    with pytest.raises(w.RemoteProtocolError, match="unknown NVMe/TCP PDU type 0x42"):
        host.next_pdu()


def test_wrong_header_length():
    host, ctrl = ready_pair()
    raw = bytearray(ctrl.encode(w.CapsuleResp(w.Cqe(1))))
    raw[2] = 32
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="hlen 32, expected 24"):
        host.next_pdu()


def test_oversized_plen_is_refused_before_buffering_it():
    host, _ = ready_pair()
    host.feed(struct.pack("<BBBBII", w.PduType.C2H_DATA, 4, 24, 24, 0xFFFFFFF0, 0))
    with pytest.raises(w.RemoteProtocolError, match="plen 4294967280") as e:
        host.next_pdu()
    assert e.value.fes == w.Fes.DATA_LIMIT_EXCEEDED


def test_plen_shorter_than_the_header():
    host, ctrl = ready_pair()
    raw = bytearray(ctrl.encode(w.CapsuleResp(w.Cqe(1))))
    raw[4:8] = struct.pack("<I", 20)
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="plen 20"):
        host.next_pdu()


def test_datal_must_match_the_data_carried():
    host, ctrl = ready_pair()
    raw = bytearray(ctrl.encode(c2h()))
    raw[16:20] = struct.pack("<I", 299)
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="datal 299 does not match the 300"):
        host.next_pdu()


def test_header_digest_mismatch():
    host, ctrl = ready_pair(hd=True)
    raw = bytearray(ctrl.encode(w.CapsuleResp(w.Cqe(7, dw0=1))))
    raw[8] ^= 0xFF
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="header digest mismatch") as e:
        host.next_pdu()
    assert e.value.fes == w.Fes.HEADER_DIGEST_ERROR


def test_data_digest_mismatch():
    host, ctrl = ready_pair(hd=True, dd=True)
    raw = bytearray(ctrl.encode(c2h()))
    raw[40] ^= 1
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="data digest mismatch"):
        host.next_pdu()


def test_missing_negotiated_header_digest():
    host, _ = ready_pair(hd=True)
    plain = w.Codec(w.Role.CONTROLLER)
    plain.feed(w.Codec(w.Role.HOST).encode(w.ICReq()))
    plain.next_pdu()
    plain.encode(w.ICResp())
    host.feed(plain.encode(w.CapsuleResp(w.Cqe(1))))
    with pytest.raises(w.RemoteProtocolError, match="lacks the negotiated header digest"):
        host.next_pdu()


def test_pdo_outside_the_pdu():
    host, ctrl = ready_pair()
    raw = bytearray(ctrl.encode(c2h()))
    raw[3] = 8  # data offset inside the header
    host.feed(bytes(raw))
    with pytest.raises(w.RemoteProtocolError, match="pdo 8"):
        host.next_pdu()


def test_truncated_stream_is_reported_at_eof():
    host, ctrl = ready_pair()
    raw = ctrl.encode(c2h())
    host.feed(raw[:50])
    assert host.next_pdu() is w.NEED_DATA
    err = host.eof_error()
    assert err is not None and "in the middle of a PDU (50 bytes" in str(err)


def test_status_messages():
    assert w.status_message(0x4020) == "namespace is write protected [status 0x4020] (do not retry)"
    assert "command specific status 0x99" in w.status_message(0x199)
    w.check_status(0, "anything")  # success raises nothing


pdus = st.one_of(
    st.builds(lambda cid, n: w.C2HData(cid, 0, bytes(range(256)) * (n // 256) + bytes(n % 256), last=True),
              st.integers(0, 0xFFFF), st.integers(1, 70000)),
    st.builds(lambda cid, s, d: w.CapsuleResp(w.Cqe(cid, s, d)), st.integers(0, 0xFFFF), st.integers(0, 0x7FFF),
              st.integers(0, 2**32 - 1)),
    st.builds(lambda cid, t, o, n: w.R2T(cid, t, o, n), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(pdus, min_size=1, max_size=6), st.booleans(), st.booleans(), st.lists(st.integers(1, 5000), max_size=20))
def test_any_split_of_any_pdu_sequence_decodes_to_the_same_pdus(seq, hd, dd, cuts):
    host, ctrl = ready_pair(hd, dd)
    stream = b"".join(ctrl.encode(p) for p in seq)
    got, pos = [], 0
    for n in cuts + [len(stream)]:
        host.feed(stream[pos:pos + n])
        pos += n
        while (p := host.next_pdu()) is not w.NEED_DATA:
            got.append(p)
    host.feed(stream[pos:])
    while (p := host.next_pdu()) is not w.NEED_DATA:
        got.append(p)
    assert got == seq


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=1024))
def test_command_capsules_round_trip(cid, nsid, slba, data):
    host, ctrl = ready_pair(True, True)
    sqe = w.Sqe(w.Opcode.READ, cid, nsid, slba & 0xFFFFFFFF, slba >> 32, 7, sgl=w.Sgl(0, 4096))
    ctrl.feed(host.encode(w.CapsuleCmd(sqe, data)))
    assert ctrl.next_pdu() == w.CapsuleCmd(sqe, data)
    assert w.rw_fields(sqe) == (slba, 8)


@pytest.mark.parametrize("digests", [False, True])
def test_placement_copies_split_read_data_straight_into_the_callers_buffer(digests):
    host, ctrl = ready_pair(digests, digests)
    payload = bytes(range(256)) * 1000
    dest = bytearray(len(payload) + 100)
    asked = []

    def place(cid, off, n):
        asked.append((cid, off, n))
        return memoryview(dest)[50 + off: 50 + off + n]

    host.placement = place
    raw = ctrl.encode(w.C2HData(9, 0, payload)) + ctrl.encode(w.CapsuleResp(w.Cqe(9)))
    for i in range(0, len(raw), 7000):  # many chunks: the PDU never sits in one
        host.feed(raw[i:i + 7000])
    pdu = host.next_pdu()
    assert asked == [(9, 0, len(payload))]
    assert pdu.data.obj is dest and bytes(dest[50:-50]) == payload
    assert host.next_pdu() == w.CapsuleResp(w.Cqe(9)) and host.buffered == 0


def test_placement_still_checks_the_data_digest():
    host, ctrl = ready_pair(True, True)
    dest = bytearray(50000)
    host.placement = lambda cid, off, n: memoryview(dest)[:n]
    raw = bytearray(ctrl.encode(w.C2HData(1, 0, bytes(50000))))
    raw[-1] ^= 1
    host.feed(bytes(raw[:100]))
    host.feed(bytes(raw[100:]))
    with pytest.raises(w.RemoteProtocolError, match="data digest mismatch"):
        host.next_pdu()

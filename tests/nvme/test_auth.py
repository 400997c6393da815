"""DH-HMAC-CHAP host pieces that need no peer: key parsing and message layout. The exchange
itself is proven against the Linux 6.12 target in tests/nvme/test_vm_interop.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import zlib

import pytest

from pifarm.errors import ConfigError
from pifarm.initiator.nvme_tcp import ConnectParams, _auth
from pifarm import nvmewire as w

HOST = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
SUB = "nqn.2024-01.io.pifarm:test"


def key_text(secret: bytes, hh: int = 1) -> str:
    return f"DHHC-1:0{hh}:" + base64.b64encode(secret + struct.pack("<I", zlib.crc32(secret))).decode() + ":"


def test_key_parsing_checks_format_length_and_crc():
    k = _auth.DhchapKey.parse(key_text(bytes(range(32))))
    assert (k.secret, k.hh) == (bytes(range(32)), 1)
    with pytest.raises(ConfigError, match="must look like DHHC-1"):
        _auth.DhchapKey.parse("secret")
    bad_crc = "DHHC-1:01:" + base64.b64encode(bytes(32) + b"\x01\x02\x03\x04").decode() + ":"
    with pytest.raises(ConfigError, match="CRC-32"):
        _auth.DhchapKey.parse(bad_crc)
    with pytest.raises(ConfigError, match="length"):
        _auth.DhchapKey.parse(key_text(bytes(20)))
    with pytest.raises(ConfigError):  # a bad key is refused when the parameters are built
        ConnectParams("127.0.0.1", 4420, SUB, HOST, dhchap_secret="DHHC-1:01:xx:")


def test_reply_is_the_hmac_over_the_challenge_and_both_nqns():
    key = _auth.DhchapKey.parse(key_text(b"k" * 32))
    kh = hmac.new(b"k" * 32, HOST.encode() + b"NVMe-over-Fabrics", "sha256").digest()
    assert key.transformed(HOST) == kh
    c1 = bytes(range(32))
    msg = struct.pack("<BBHHBBBBHI", 1, 1, 0, 7, 32, 0, 1, 0, 0, 1234) + c1
    ch = _auth.parse_challenge(msg, 7, "test")
    assert (ch.hashid, ch.seqnum, ch.cval) == (1, 1234, c1)
    rep = _auth.reply(key, ch, 7, HOST, SUB)
    want = hmac.new(kh, c1 + struct.pack("<IH", 1234, 7) + b"\0HostHost" + HOST.encode() + b"\0" + SUB.encode(),
                    hashlib.sha256).digest()
    assert rep[:2] == bytes([1, 2]) and rep[16:48] == want and len(rep) == 16 + 64


def test_refusals_are_clear():
    fail1 = struct.pack("<BBHHBB", 0, 0xF1, 0, 7, 1, 1)
    with pytest.raises(w.NvmeStatusError, match="refused DH-HMAC-CHAP: authentication failed"):
        _auth.check_success1(fail1 + bytes(8), 7, "test")
    ffdhe = struct.pack("<BBHHBBBBHI", 1, 1, 0, 7, 32, 0, 1, 1, 256, 1) + bytes(32 + 256)
    with pytest.raises(w.NvmeStatusError, match="NULL group only"):
        _auth.parse_challenge(ffdhe, 7, "test")
    with pytest.raises(w.RemoteProtocolError, match="unexpected DH-HMAC-CHAP message"):
        _auth.check_success1(struct.pack("<BBHH", 1, 3, 0, 8) + bytes(10), 7, "test")


def test_negotiate_offers_every_hash_and_group():
    msg = _auth.negotiate(3)
    assert len(msg) == 72 and msg[:8] == bytes([0, 0, 0, 0, 3, 0, 0, 1])
    assert msg[8:12] == bytes([1, 0, 3, 6]) and msg[12:15] == bytes([1, 2, 3]) and msg[42:48] == bytes(range(6))
    sqe, data = w.auth_send(msg)
    assert (sqe.fctype, sqe.cdw11, sqe.sgl.type, data) == (w.FcType.AUTH_SEND, 72, w.SGL_INCAPSULE, msg)
    assert sqe.pack()[40:44] == bytes([0, 1, 1, 0xE9])  # SPSP0, SPSP1, SECP = DH-HMAC-CHAP

"""DH-HMAC-CHAP host side (NVMe base spec 2.0, 8.13.5): unidirectional, NULL Diffie-Hellman group.

A queue whose Connect response asks for authentication runs, over Authentication Send/Receive:
Negotiate -> Challenge -> Reply -> Success1. The response is

    HMAC_H(Kh, C1 || SEQ(le32) || T_ID(le16) || 0x00 || "HostHost" || hostnqn || 0x00 || subnqn)

where H is the hash the controller chose and Kh the host secret, transformed with
HMAC_hh(secret, hostnqn || "NVMe-over-Fabrics") unless the key says hh = 00. Finite-field DH
groups and controller (bidirectional) authentication are refused with a clear message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import zlib
from dataclasses import dataclass

from pifarm.errors import ConfigError
from pifarm import nvmewire as w

HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}
COMMON, DHCHAP = 0x00, 0x01  # auth_type
NEGOTIATE, CHALLENGE, REPLY, SUCCESS1, SUCCESS2, FAILURE2, FAILURE1 = 0x00, 0x01, 0x02, 0x03, 0x04, 0xF0, 0xF1
DHGROUP_NULL = 0x00
REASONS = {1: "authentication failed", 2: "authentication protocol unusable", 3: "secure channel concatenation mismatch",
           4: "hash function unusable", 5: "DH group unusable", 6: "incorrect payload", 7: "incorrect protocol message"}
_KEY_RE = re.compile(r"^DHHC-1:(0[0-3]):([A-Za-z0-9+/=]+):\Z")
_HEAD = struct.Struct("<BBHH")  # auth_type, auth_id, reserved, t_id


@dataclass(frozen=True)
class DhchapKey:
    secret: bytes
    hh: int  # 0: use as is; 1-3: transform with HMAC-SHA256/384/512 first

    @classmethod
    def parse(cls, text: str) -> "DhchapKey":
        """`DHHC-1:<hh>:<base64(secret || CRC-32 le)>:`, as `nvme gen-dhchap-key` prints it."""
        m = _KEY_RE.match(text.strip())
        if not m:
            raise ConfigError("DH-HMAC-CHAP secret must look like DHHC-1:01:<base64>: (see `nvme gen-dhchap-key`)")
        try:
            raw = base64.b64decode(m.group(2), validate=True)
        except binascii.Error as e:
            raise ConfigError(f"DH-HMAC-CHAP secret: bad base64 ({e})") from e
        secret, crc = raw[:-4], raw[-4:]
        if len(secret) not in (32, 48, 64) or struct.pack("<I", zlib.crc32(secret)) != crc:
            raise ConfigError("DH-HMAC-CHAP secret is corrupt (length or CRC-32 check failed); copy it again")
        return cls(secret, int(m.group(1)))

    def transformed(self, nqn: str) -> bytes:
        if self.hh == 0:
            return self.secret
        return hmac.new(self.secret, nqn.encode() + b"NVMe-over-Fabrics", HASHES[self.hh]).digest()


def negotiate(t_id: int) -> bytes:
    """Offer every hash and every group, as the Linux host does: Linux targets keep their
    configured group only when the list holds another one too (a NULL-only list is refused).
    A challenge naming a finite-field group is then refused by `parse_challenge`."""
    ids = bytearray(60)
    ids[0:3] = bytes(HASHES)  # SHA-256, SHA-384, SHA-512
    ids[30:36] = bytes(range(6))  # NULL, ffdhe2048 ... ffdhe8192
    return _HEAD.pack(COMMON, NEGOTIATE, 0, t_id) + bytes([0, 1]) + bytes([0x01, 0, 3, 6]) + bytes(ids)


@dataclass(frozen=True)
class Challenge:
    hashid: int
    dhgid: int
    seqnum: int
    cval: bytes


def _check(msg: bytes, t_id: int, want: int, where: str) -> None:
    auth_type, auth_id, _r, tid = _HEAD.unpack_from(msg)
    if (auth_type, auth_id) == (COMMON, FAILURE1):
        reason = REASONS.get(msg[7], f"reason 0x{msg[7]:02x}")
        raise w.NvmeStatusError(f"{where}: controller refused DH-HMAC-CHAP: {reason} (check the host's secret)",
                                0x190 | w.DNR)
    if (auth_type, auth_id) != (DHCHAP, want) or tid != t_id:
        raise w.RemoteProtocolError(f"{where}: unexpected DH-HMAC-CHAP message {auth_type:#x}/{auth_id:#x} "
                                    f"(transaction {tid}, expected {want:#x} in {t_id})")


def parse_challenge(msg: bytes, t_id: int, where: str) -> Challenge:
    _check(msg, t_id, CHALLENGE, where)
    hl, _r, hashid, dhgid, dhvlen, seq = struct.unpack_from("<BBBBHI", msg, 6)
    if hashid not in HASHES or hashlib.new(HASHES[hashid]).digest_size != hl:
        raise w.RemoteProtocolError(f"{where}: DH-HMAC-CHAP challenge with hash {hashid} and length {hl}")
    if dhgid != DHGROUP_NULL or dhvlen:
        raise w.NvmeStatusError(f"{where}: the controller wants DH group {dhgid}; this initiator does DH-HMAC-CHAP "
                                "with the NULL group only (set the host's dhchap_dhgroup to null)", 0x191 | w.DNR)
    return Challenge(hashid, dhgid, seq, bytes(msg[16:16 + hl]))


def reply(key: DhchapKey, ch: Challenge, t_id: int, hostnqn: str, subnqn: str) -> bytes:
    mac = hmac.new(key.transformed(hostnqn), digestmod=HASHES[ch.hashid])
    mac.update(ch.cval + struct.pack("<IH", ch.seqnum, t_id) + b"\0" + b"HostHost")
    mac.update(hostnqn.encode() + b"\0" + subnqn.encode())
    hl = len(ch.cval)
    head = _HEAD.pack(DHCHAP, REPLY, 0, t_id) + struct.pack("<BBBBHI", hl, 0, 0, 0, 0, 0)
    return head + mac.digest() + bytes(hl)  # no controller challenge (unidirectional)


def check_success1(msg: bytes, t_id: int, where: str) -> None:
    _check(msg, t_id, SUCCESS1, where)

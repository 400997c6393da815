"""NVMe submission and completion queue entries, and the commands pifarm sends or serves.

An SQE is 64 bytes: opcode, flags, command id, nsid (byte 0 of it is the fctype of a Fabrics
command), cdw2/3, metadata pointer, the data pointer as an SGL descriptor, cdw10-15. Command
specific fields are packed into cdw10-15 by the builders below, so one `Sqe` type serves every
command and the golden captures round-trip byte for byte.

Status words use the Linux convention (the 15 bits above the phase bit): SC in bits 7:0, SCT in
bits 10:8, MORE 0x2000, DNR 0x4000.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

from pifarm.nvmewire._errors import LocalProtocolError, RemoteProtocolError

_SQE = struct.Struct("<BBHIIIQQIBBBB6I")  # opcode flags cid nsid cdw2 cdw3 mptr | sgl(addr len 3rsvd type) | cdw10-15
_CQE = struct.Struct("<IIHHHH")

SGL_INCAPSULE = 0x01  # data block descriptor, subtype offset: data sits in the capsule
SGL_TRANSPORT = 0x5A  # transport SGL data block, transport specific: data moves in Data PDUs
PSDT_SGL = 0x40  # flags bits 7:6 = 01: the data pointer is an SGL (fabrics always use SGLs)

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
DNR = 0x4000


class Opcode(enum.IntEnum):
    # admin
    GET_LOG_PAGE = 0x02
    IDENTIFY = 0x06
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    ASYNC_EVENT = 0x0C
    KEEP_ALIVE = 0x18
    FABRICS = 0x7F
    # I/O (same numbers as some admin opcodes; meaning depends on the queue)
    FLUSH = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_ZEROES = 0x08
    DSM = 0x09


class FcType(enum.IntEnum):
    PROPERTY_SET = 0x00
    CONNECT = 0x01
    PROPERTY_GET = 0x04
    AUTH_SEND = 0x05
    AUTH_RECEIVE = 0x06
    DISCONNECT = 0x08


class Prop(enum.IntEnum):
    CAP = 0x00
    VS = 0x08
    CC = 0x14
    CSTS = 0x1C


class Cns(enum.IntEnum):
    NAMESPACE = 0x00
    CONTROLLER = 0x01
    ACTIVE_NS_LIST = 0x02
    NS_DESCRIPTORS = 0x03


class Lid(enum.IntEnum):
    ERROR = 0x01
    SMART = 0x02
    CHANGED_NS = 0x04
    CMD_EFFECTS = 0x05
    ANA = 0x0C
    DISCOVERY = 0x70


class Feature(enum.IntEnum):
    NUM_QUEUES = 0x07
    ASYNC_EVENT_CONFIG = 0x0B
    KATO = 0x0F


@dataclass(frozen=True)
class Sgl:
    addr: int = 0
    length: int = 0
    type: int = SGL_TRANSPORT


@dataclass(frozen=True)
class Sqe:
    opcode: int
    cid: int = 0
    nsid: int = 0
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0
    sgl: Sgl = Sgl()
    flags: int = PSDT_SGL
    cdw2: int = 0
    cdw3: int = 0
    mptr: int = 0

    def __post_init__(self) -> None:
        for name, bits in (("opcode", 8), ("cid", 16), ("nsid", 32), ("flags", 8)):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < (1 << bits):
                raise LocalProtocolError(f"SQE {name}={v!r} does not fit in {bits} bits")

    @property
    def fctype(self) -> int:
        """Fabrics command type (the low byte of the nsid field)."""
        return self.nsid & 0xFF

    def with_cid(self, cid: int) -> "Sqe":
        return Sqe(self.opcode, cid, self.nsid, self.cdw10, self.cdw11, self.cdw12, self.cdw13,
                   self.cdw14, self.cdw15, self.sgl, self.flags, self.cdw2, self.cdw3, self.mptr)

    def pack(self) -> bytes:
        s = self.sgl
        try:
            return _SQE.pack(self.opcode, self.flags, self.cid, self.nsid, self.cdw2, self.cdw3, self.mptr,
                             s.addr, s.length, 0, 0, 0, s.type,
                             self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15)
        except struct.error as e:
            raise LocalProtocolError(f"SQE field out of range: {e}") from e

    @classmethod
    def unpack(cls, raw: bytes) -> "Sqe":
        (op, flags, cid, nsid, cdw2, cdw3, mptr, addr, length, _r1, _r2, _r3, stype,
         c10, c11, c12, c13, c14, c15) = _SQE.unpack(raw)
        return cls(op, cid, nsid, c10, c11, c12, c13, c14, c15, Sgl(addr, length, stype), flags, cdw2, cdw3, mptr)


@dataclass(frozen=True)
class Cqe:
    cid: int
    status: int = 0  # without the phase bit (see module docstring)
    dw0: int = 0
    dw1: int = 0
    sqhd: int = 0
    sqid: int = 0

    def pack(self) -> bytes:
        try:
            return _CQE.pack(self.dw0, self.dw1, self.sqhd, self.sqid, self.cid, (self.status << 1) & 0xFFFF)
        except struct.error as e:
            raise LocalProtocolError(f"CQE field out of range: {e}") from e

    @classmethod
    def unpack(cls, raw: bytes) -> "Cqe":
        dw0, dw1, sqhd, sqid, cid, st = _CQE.unpack(raw)
        return cls(cid=cid, status=st >> 1, dw0=dw0, dw1=dw1, sqhd=sqhd, sqid=sqid)

    @property
    def result64(self) -> int:
        return self.dw0 | self.dw1 << 32


# ---- Fabrics ------------------------------------------------------------------------------

_CONNECT_DATA = struct.Struct("<16sH238x256s256s256x")


@dataclass(frozen=True)
class ConnectData:
    """The 1024-byte in-capsule data of a Fabrics Connect."""

    hostid: uuid.UUID
    cntlid: int
    subnqn: str
    hostnqn: str

    def pack(self) -> bytes:
        for name in ("subnqn", "hostnqn"):
            raw = getattr(self, name).encode()
            if not raw or len(raw) > 223:
                raise LocalProtocolError(f"{name} must be 1-223 bytes, got {len(raw)}")
        return _CONNECT_DATA.pack(self.hostid.bytes, self.cntlid, self.subnqn.encode(), self.hostnqn.encode())

    @classmethod
    def unpack(cls, raw: bytes) -> "ConnectData":
        raw = bytes(raw)
        if len(raw) < _CONNECT_DATA.size:
            raise RemoteProtocolError(f"Connect data is {len(raw)} bytes, expected {_CONNECT_DATA.size}")
        hostid, cntlid, sub, host = _CONNECT_DATA.unpack_from(raw)
        return cls(uuid.UUID(bytes=hostid), cntlid, _cstr(sub), _cstr(host))


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def connect_cmd(qid: int, sqsize: int, kato_ms: int, data: ConnectData) -> tuple[Sqe, bytes]:
    """A Fabrics Connect: recfmt 0, qid, sqsize (0-based), kato; data in the capsule."""
    body = data.pack()
    sqe = Sqe(Opcode.FABRICS, nsid=FcType.CONNECT, cdw10=qid << 16, cdw11=sqsize, cdw12=kato_ms,
              sgl=Sgl(0, len(body), SGL_INCAPSULE))
    return sqe, body


def connect_fields(sqe: Sqe) -> tuple[int, int, int, int]:
    """(recfmt, qid, sqsize, kato_ms) of a Connect SQE."""
    return sqe.cdw10 & 0xFFFF, sqe.cdw10 >> 16, sqe.cdw11 & 0xFFFF, sqe.cdw12


def property_get(offset: int, size8: bool) -> Sqe:
    return Sqe(Opcode.FABRICS, nsid=FcType.PROPERTY_GET, cdw10=1 if size8 else 0, cdw11=offset)


def property_set(offset: int, value: int, size8: bool = False) -> Sqe:
    return Sqe(Opcode.FABRICS, nsid=FcType.PROPERTY_SET, cdw10=1 if size8 else 0, cdw11=offset,
               cdw12=value & 0xFFFFFFFF, cdw13=value >> 32)


# ---- Admin and I/O ------------------------------------------------------------------------

def identify(cns: int, nsid: int = 0, length: int = 4096) -> Sqe:
    return Sqe(Opcode.IDENTIFY, nsid=nsid, cdw10=cns, sgl=Sgl(0, length))


def get_log_page(lid: int, length: int, offset: int = 0, nsid: int = 0) -> Sqe:
    if length % 4 or length <= 0:
        raise LocalProtocolError(f"log page length must be a positive multiple of 4, got {length}")
    numd = length // 4 - 1
    return Sqe(Opcode.GET_LOG_PAGE, nsid=nsid, cdw10=lid | (numd & 0xFFFF) << 16, cdw11=numd >> 16,
               cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32, sgl=Sgl(0, length))


def log_page_fields(sqe: Sqe) -> tuple[int, int, int]:
    """(lid, length in bytes, offset) of a Get Log Page SQE."""
    numd = (sqe.cdw10 >> 16) | (sqe.cdw11 & 0xFFFF) << 16
    return sqe.cdw10 & 0xFF, (numd + 1) * 4, sqe.cdw12 | sqe.cdw13 << 32


def set_features(fid: int, value: int) -> Sqe:
    return Sqe(Opcode.SET_FEATURES, cdw10=fid, cdw11=value)


def keep_alive() -> Sqe:
    return Sqe(Opcode.KEEP_ALIVE)


def read_cmd(nsid: int, slba: int, nlb: int, lba_size: int) -> Sqe:
    if not 1 <= nlb <= 0x10000:
        raise LocalProtocolError(f"a Read moves 1-65536 blocks, asked for {nlb}")
    return Sqe(Opcode.READ, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=nlb - 1,
               sgl=Sgl(0, nlb * lba_size))


def write_cmd(nsid: int, slba: int, nlb: int, lba_size: int) -> Sqe:
    return Sqe(Opcode.WRITE, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=nlb - 1,
               sgl=Sgl(0, nlb * lba_size))


def rw_fields(sqe: Sqe) -> tuple[int, int]:
    """(slba, nlb) of a Read or Write SQE (nlb 1-based)."""
    return sqe.cdw10 | sqe.cdw11 << 32, (sqe.cdw12 & 0xFFFF) + 1


# ---- in-band authentication (Fabrics Authentication Send / Receive) ---------------------------

AUTH_SECP_DHCHAP = 0xE9  # security protocol: NVMe DH-HMAC-CHAP
_AUTH_CDW10 = 0x01 << 8 | 0x01 << 16 | AUTH_SECP_DHCHAP << 24  # byte 40 rsvd, SPSP0=1, SPSP1=1, SECP


def auth_send(data: bytes) -> tuple[Sqe, bytes]:
    """Authentication Send carrying one DH-HMAC-CHAP message in the capsule."""
    return Sqe(Opcode.FABRICS, nsid=FcType.AUTH_SEND, cdw10=_AUTH_CDW10, cdw11=len(data),
               sgl=Sgl(0, len(data), SGL_INCAPSULE)), data


def auth_receive(length: int = 4096) -> Sqe:
    """Authentication Receive: the controller's next DH-HMAC-CHAP message (C2H data)."""
    return Sqe(Opcode.FABRICS, nsid=FcType.AUTH_RECEIVE, cdw10=_AUTH_CDW10, cdw11=length, sgl=Sgl(0, length))

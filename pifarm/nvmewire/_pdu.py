"""NVMe/TCP PDUs (NVMe/TCP transport spec 1.0, section 3.6) as frozen value objects.

Every PDU starts with the 8-byte common header: type, flags, hlen, pdo, plen (little endian).
The PDU-specific header follows up to `hlen`; a CRC32C header digest may follow the header and
a CRC32C data digest may follow the data. Which digests are present is a property of the queue
(negotiated by ICReq/ICResp), so the codec, not the PDU, adds and checks them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pifarm.nvmewire._errors import LocalProtocolError
from pifarm.nvmewire._sqe import Cqe, Sqe

COMMON = struct.Struct("<BBBBI")
CH_LEN = COMMON.size  # 8


class PduType(enum.IntEnum):
    ICREQ = 0x00
    ICRESP = 0x01
    H2C_TERM = 0x02
    C2H_TERM = 0x03
    CAPSULE_CMD = 0x04
    CAPSULE_RESP = 0x05
    H2C_DATA = 0x06
    C2H_DATA = 0x07
    R2T = 0x09


class Flag(enum.IntFlag):
    HDGST = 0x01
    DDGST = 0x02
    DATA_LAST = 0x04  # also ICReq/ICResp: not used
    DATA_SUCCESS = 0x08


class Fes(enum.IntEnum):
    """Fatal error status carried by a termination request."""

    INVALID_HEADER_FIELD = 0x01
    PDU_SEQUENCE_ERROR = 0x02
    HEADER_DIGEST_ERROR = 0x03
    DATA_OUT_OF_RANGE = 0x04
    R2T_LIMIT_EXCEEDED = 0x05
    DATA_LIMIT_EXCEEDED = 0x05
    UNSUPPORTED_PARAMETER = 0x06


# The fixed header length of each PDU type; anything else on the wire is malformed.
HLEN = {
    PduType.ICREQ: 128,
    PduType.ICRESP: 128,
    PduType.H2C_TERM: 24,
    PduType.C2H_TERM: 24,
    PduType.CAPSULE_CMD: 72,
    PduType.CAPSULE_RESP: 24,
    PduType.H2C_DATA: 24,
    PduType.C2H_DATA: 24,
    PduType.R2T: 24,
}

# Types a header digest protects once negotiated (never IC or termination PDUs).
DIGESTED = frozenset({PduType.CAPSULE_CMD, PduType.CAPSULE_RESP, PduType.H2C_DATA, PduType.C2H_DATA, PduType.R2T})
# Types that may carry data (and then a data digest).
WITH_DATA = frozenset({PduType.CAPSULE_CMD, PduType.H2C_DATA, PduType.C2H_DATA})


def _u(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"{name}={value!r} does not fit in {bits} bits")


@dataclass(frozen=True)
class ICReq:
    pfv: int = 0
    hpda: int = 0
    hdgst: bool = False
    ddgst: bool = False
    maxr2t: int = 0

    type = PduType.ICREQ

    def __post_init__(self) -> None:
        _u("pfv", self.pfv, 16)
        _u("hpda", self.hpda, 5)
        _u("maxr2t", self.maxr2t, 32)


@dataclass(frozen=True)
class ICResp:
    pfv: int = 0
    cpda: int = 0
    hdgst: bool = False
    ddgst: bool = False
    maxdata: int = 4 << 20

    type = PduType.ICRESP

    def __post_init__(self) -> None:
        _u("pfv", self.pfv, 16)
        _u("cpda", self.cpda, 5)
        _u("maxdata", self.maxdata, 32)
        if self.maxdata < 4096:
            raise LocalProtocolError(f"ICResp maxh2cdata {self.maxdata} is below the 4096 bytes the spec requires")


@dataclass(frozen=True)
class TermReq:
    """H2CTermReq (from the host) or C2HTermReq (from the controller): the queue is dead."""

    fes: int
    fei: int = 0
    data: bytes = b""  # the offending PDU header, as far as it was received
    from_host: bool = True

    def __post_init__(self) -> None:
        _u("fes", self.fes, 16)
        _u("fei", self.fei, 32)

    @property
    def type(self) -> PduType:  # type: ignore[override]
        return PduType.H2C_TERM if self.from_host else PduType.C2H_TERM


@dataclass(frozen=True)
class CapsuleCmd:
    sqe: Sqe
    data: bytes = b""  # in-capsule data

    type = PduType.CAPSULE_CMD


@dataclass(frozen=True)
class CapsuleResp:
    cqe: Cqe

    type = PduType.CAPSULE_RESP


@dataclass(frozen=True)
class H2CData:
    cccid: int
    ttag: int
    offset: int
    data: bytes | memoryview
    last: bool = True

    type = PduType.H2C_DATA

    def __post_init__(self) -> None:
        _u("cccid", self.cccid, 16)
        _u("ttag", self.ttag, 16)
        _u("datao", self.offset, 32)


@dataclass(frozen=True)
class C2HData:
    cccid: int
    offset: int
    data: bytes | memoryview
    last: bool = True
    success: bool = False  # the controller skips the CapsuleResp (host must then assume status 0)

    type = PduType.C2H_DATA

    def __post_init__(self) -> None:
        _u("cccid", self.cccid, 16)
        _u("datao", self.offset, 32)
        if self.success and not self.last:
            raise LocalProtocolError("C2HData SUCCESS flag requires LAST")


@dataclass(frozen=True)
class R2T:
    cccid: int
    ttag: int
    offset: int
    length: int

    type = PduType.R2T

    def __post_init__(self) -> None:
        _u("cccid", self.cccid, 16)
        _u("ttag", self.ttag, 16)
        _u("r2to", self.offset, 32)
        _u("r2tl", self.length, 32)


Pdu = ICReq | ICResp | TermReq | CapsuleCmd | CapsuleResp | H2CData | C2HData | R2T

_IC = struct.Struct("<HBBI")  # pfv, hpda/cpda, dgst, maxr2t/maxdata
_TERM = struct.Struct("<HI")  # fes, fei (then 10 reserved bytes)
_DATA = struct.Struct("<HHII")  # cccid, ttag, datao, datal (then 4 reserved)


def pack_header(pdu: Pdu) -> bytes:
    """The PDU-specific header, `hlen - 8` bytes (without the common header)."""
    t = pdu.type
    size = HLEN[t] - CH_LEN
    if isinstance(pdu, ICReq):
        body = _IC.pack(pdu.pfv, pdu.hpda, int(pdu.hdgst) | int(pdu.ddgst) << 1, pdu.maxr2t)
    elif isinstance(pdu, ICResp):
        body = _IC.pack(pdu.pfv, pdu.cpda, int(pdu.hdgst) | int(pdu.ddgst) << 1, pdu.maxdata)
    elif isinstance(pdu, TermReq):
        body = _TERM.pack(pdu.fes, pdu.fei)
    elif isinstance(pdu, CapsuleCmd):
        body = pdu.sqe.pack()
    elif isinstance(pdu, CapsuleResp):
        body = pdu.cqe.pack()
    elif isinstance(pdu, H2CData):
        body = _DATA.pack(pdu.cccid, pdu.ttag, pdu.offset, len(pdu.data))
    elif isinstance(pdu, C2HData):
        body = _DATA.pack(pdu.cccid, 0, pdu.offset, len(pdu.data))
    elif isinstance(pdu, R2T):
        body = _DATA.pack(pdu.cccid, pdu.ttag, pdu.offset, pdu.length)
    else:
        raise LocalProtocolError(f"not an NVMe/TCP PDU: {pdu!r}")
    return body.ljust(size, b"\0")


def pdu_data(pdu: Pdu) -> bytes | memoryview:
    if isinstance(pdu, (CapsuleCmd, H2CData, C2HData)):
        return pdu.data
    return b""


def pdu_flags(pdu: Pdu) -> int:
    if isinstance(pdu, H2CData):
        return Flag.DATA_LAST if pdu.last else 0
    if isinstance(pdu, C2HData):
        return (Flag.DATA_LAST if pdu.last else 0) | (Flag.DATA_SUCCESS if pdu.success else 0)
    return 0


def unpack(t: PduType, flags: int, header: memoryview, data: bytes | memoryview) -> Pdu:
    """Build a PDU from its specific header (`hlen - 8` bytes) and its data."""
    if t in (PduType.ICREQ, PduType.ICRESP):
        pfv, pda, dgst, last = _IC.unpack_from(header)
        hd, dd = bool(dgst & 1), bool(dgst & 2)
        if t == PduType.ICREQ:
            return ICReq(pfv=pfv, hpda=pda & 0x1F, hdgst=hd, ddgst=dd, maxr2t=last)
        return ICResp(pfv=pfv, cpda=pda & 0x1F, hdgst=hd, ddgst=dd, maxdata=last)
    if t in (PduType.H2C_TERM, PduType.C2H_TERM):
        fes, fei = _TERM.unpack_from(header)
        return TermReq(fes=fes, fei=fei, data=bytes(data), from_host=t == PduType.H2C_TERM)
    if t == PduType.CAPSULE_CMD:
        return CapsuleCmd(Sqe.unpack(bytes(header[:64])), bytes(data))
    if t == PduType.CAPSULE_RESP:
        return CapsuleResp(Cqe.unpack(bytes(header[:16])))
    cccid, ttag, off, length = _DATA.unpack_from(header)
    if t == PduType.R2T:
        return R2T(cccid, ttag, off, length)
    last = bool(flags & Flag.DATA_LAST)
    if t == PduType.H2C_DATA:
        return H2CData(cccid, ttag, off, data, last)
    return C2HData(cccid, off, data, last, bool(flags & Flag.DATA_SUCCESS))


def data_length_field(t: PduType, header: memoryview) -> int | None:
    """The datal field of data PDUs, so the codec can cross-check it against plen."""
    if t in (PduType.H2C_DATA, PduType.C2H_DATA):
        return _DATA.unpack_from(header)[3]
    return None

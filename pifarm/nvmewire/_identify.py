"""Identify data structures and the discovery log page, both directions.

Only the fields pifarm reads or a Linux host checks are modelled; everything else encodes as
zero. Offsets are from NVMe base spec 2.0 (Identify Controller figure 275, Identify Namespace
figure 280, Namespace Identification Descriptor figure 283) and the NVMe-oF spec (Discovery Log
Page, figures 37-38).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from pifarm.nvmewire._errors import RemoteProtocolError

IDENTIFY_LEN = 4096


def _s(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").rstrip()


def _pad(text: str, n: int, fill: bytes = b" ") -> bytes:
    raw = text.encode("ascii", "replace")[:n]
    return raw + fill * (n - len(raw))


def _need(raw: bytes, n: int, what: str) -> None:
    if len(raw) < n:
        raise RemoteProtocolError(f"{what} is {len(raw)} bytes, expected at least {n}")


@dataclass(frozen=True)
class IdentifyController:
    vid: int = 0
    serial: str = ""
    model: str = ""
    firmware: str = ""
    mdts: int = 0  # max transfer = 2**mdts * min page size (4 KiB); 0 = no limit
    cntlid: int = 0
    ver: int = 0x10300
    cmic: int = 0
    oaes: int = 0  # asynchronous events supported (bit 8: namespace attribute notices)
    lpa: int = 0
    kas: int = 0  # keep alive granularity in 100 ms units; 0 = keep alive not supported
    sqes: int = 0x66
    cqes: int = 0x44
    maxcmd: int = 128
    nn: int = 0
    sgls: int = 0x100005  # SGLs supported, keyed data block, offset addressing (what fabrics need)
    subnqn: str = ""
    ioccsz: int = 4  # 16-byte units: 4 = a bare SQE, no in-capsule data on I/O queues
    iorcsz: int = 1
    icdoff: int = 0
    fcatt: int = 0
    msdbd: int = 1
    cntrltype: int = 1  # 1 = I/O controller, 2 = discovery controller

    def max_transfer(self, page: int = 4096) -> int | None:
        return page << self.mdts if self.mdts else None

    def pack(self) -> bytes:
        b = bytearray(IDENTIFY_LEN)
        struct.pack_into("<H", b, 0, self.vid)
        b[4:24] = _pad(self.serial, 20)
        b[24:64] = _pad(self.model, 40)
        b[64:72] = _pad(self.firmware, 8)
        b[76] = self.cmic
        b[77] = self.mdts
        struct.pack_into("<HIxxxxxxxxI", b, 78, self.cntlid, self.ver, self.oaes)
        b[111] = self.cntrltype
        b[261] = self.lpa
        struct.pack_into("<H", b, 320, self.kas)
        b[512], b[513] = self.sqes, self.cqes
        struct.pack_into("<HI", b, 514, self.maxcmd, self.nn)
        struct.pack_into("<I", b, 536, self.sgls)
        b[768:1024] = _pad(self.subnqn, 256, b"\0")
        struct.pack_into("<IIHBB", b, 1792, self.ioccsz, self.iorcsz, self.icdoff, self.fcatt, self.msdbd)
        return bytes(b)

    @classmethod
    def unpack(cls, raw: bytes) -> "IdentifyController":
        raw = bytes(raw)
        _need(raw, IDENTIFY_LEN, "Identify Controller data")
        (vid,) = struct.unpack_from("<H", raw, 0)
        cntlid, ver, oaes = struct.unpack_from("<HIxxxxxxxxI", raw, 78)
        (kas,) = struct.unpack_from("<H", raw, 320)
        maxcmd, nn = struct.unpack_from("<HI", raw, 514)
        (sgls,) = struct.unpack_from("<I", raw, 536)
        ioccsz, iorcsz, icdoff, fcatt, msdbd = struct.unpack_from("<IIHBB", raw, 1792)
        return cls(vid=vid, serial=_s(raw[4:24]), model=_s(raw[24:64]), firmware=_s(raw[64:72]), mdts=raw[77],
                   cntlid=cntlid, ver=ver, cmic=raw[76], oaes=oaes, lpa=raw[261], kas=kas, sqes=raw[512], cqes=raw[513],
                   maxcmd=maxcmd, nn=nn, sgls=sgls, subnqn=_s(raw[768:1024]), ioccsz=ioccsz, iorcsz=iorcsz,
                   icdoff=icdoff, fcatt=fcatt, msdbd=msdbd, cntrltype=raw[111])


@dataclass(frozen=True)
class IdentifyNamespace:
    nsze: int
    ncap: int
    nuse: int
    lba_shift: int = 12  # LBA data size = 2**lba_shift (format 0)
    nguid: bytes = bytes(16)
    eui64: bytes = bytes(8)
    nsattr: int = 0  # bit 0: write protected
    lbafs: tuple[int, ...] = field(default=(), compare=False)  # raw LBA format dwords when decoded

    @property
    def lba_size(self) -> int:
        return 1 << self.lba_shift

    @property
    def size_bytes(self) -> int:
        return self.nsze * self.lba_size

    @property
    def write_protected(self) -> bool:
        return bool(self.nsattr & 1)

    def pack(self) -> bytes:
        b = bytearray(IDENTIFY_LEN)
        struct.pack_into("<QQQ", b, 0, self.nsze, self.ncap, self.nuse)
        b[25] = 0  # nlbaf: one format (0-based)
        b[26] = 0  # flbas: format 0
        b[99] = self.nsattr
        b[104:120] = self.nguid
        b[120:128] = self.eui64
        struct.pack_into("<I", b, 128, self.lba_shift << 16)
        return bytes(b)

    @classmethod
    def unpack(cls, raw: bytes) -> "IdentifyNamespace":
        raw = bytes(raw)
        _need(raw, IDENTIFY_LEN, "Identify Namespace data")
        nsze, ncap, nuse = struct.unpack_from("<QQQ", raw, 0)
        nlbaf, flbas = raw[25], raw[26]
        fmt = (flbas & 0x0F) | ((flbas >> 5) & 0x3) << 4
        lbafs = struct.unpack_from("<64I", raw, 128)[: nlbaf + 1]
        if fmt > nlbaf:
            raise RemoteProtocolError(f"Identify Namespace selects LBA format {fmt} of only {nlbaf + 1}")
        shift = (lbafs[fmt] >> 16) & 0xFF
        if not 9 <= shift <= 16:
            raise RemoteProtocolError(f"Identify Namespace LBA data size 2**{shift} is not supported (512 B - 64 KiB)")
        return cls(nsze, ncap, nuse, shift, bytes(raw[104:120]), bytes(raw[120:128]), raw[99], tuple(lbafs))


def pack_ns_list(nsids: list[int], after: int = 0) -> bytes:
    ids = sorted(n for n in nsids if n > after)[:1024]
    return struct.pack(f"<{len(ids)}I", *ids).ljust(IDENTIFY_LEN, b"\0")


def unpack_ns_list(raw: bytes) -> list[int]:
    raw = bytes(raw)
    _need(raw, IDENTIFY_LEN, "Active Namespace ID list")
    out = []
    for (n,) in struct.iter_unpack("<I", raw[:IDENTIFY_LEN]):
        if n == 0:
            break
        out.append(n)
    return out


NIDT_EUI64, NIDT_NGUID, NIDT_UUID, NIDT_CSI = 1, 2, 3, 4
_NIDL = {NIDT_EUI64: 8, NIDT_NGUID: 16, NIDT_UUID: 16, NIDT_CSI: 1}


@dataclass(frozen=True)
class NsDescriptors:
    uuid: uuid.UUID | None = None
    nguid: bytes | None = None
    eui64: bytes | None = None
    csi: int | None = None

    def pack(self) -> bytes:
        b = bytearray()
        for nidt, val in ((NIDT_EUI64, self.eui64), (NIDT_NGUID, self.nguid),
                          (NIDT_UUID, self.uuid.bytes if self.uuid else None),
                          (NIDT_CSI, bytes([self.csi]) if self.csi is not None else None)):
            if val is not None:
                b += struct.pack("<BBH", nidt, len(val), 0) + val
        return bytes(b).ljust(IDENTIFY_LEN, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> "NsDescriptors":
        raw = bytes(raw)
        _need(raw, IDENTIFY_LEN, "Namespace Identification Descriptor list")
        found: dict[int, bytes] = {}
        pos = 0
        while pos + 4 <= IDENTIFY_LEN:
            nidt, nidl = raw[pos], raw[pos + 1]
            if nidt == 0:
                break
            if pos + 4 + nidl > IDENTIFY_LEN or (nidt in _NIDL and nidl != _NIDL[nidt]):
                raise RemoteProtocolError(f"namespace descriptor type {nidt} at {pos} has bad length {nidl}")
            found.setdefault(nidt, bytes(raw[pos + 4: pos + 4 + nidl]))
            pos += 4 + nidl
        u = found.get(NIDT_UUID)
        csi = found.get(NIDT_CSI)
        return cls(uuid.UUID(bytes=u) if u else None, found.get(NIDT_NGUID), found.get(NIDT_EUI64),
                   csi[0] if csi else None)


# ---- discovery log page (LID 0x70) ----------------------------------------------------------

TRTYPE_TCP = 3
ADRFAM_IPV4, ADRFAM_IPV6 = 1, 2
SUBTYPE_REFERRAL, SUBTYPE_NVME, SUBTYPE_CURRENT_DISCOVERY = 1, 2, 3
DISC_HDR = struct.Struct("<QQH")
DISC_ENTRY_LEN = 1024
TREQ_NOT_SPECIFIED = 0


@dataclass(frozen=True)
class DiscoveryEntry:
    subnqn: str
    traddr: str
    trsvcid: str
    subtype: int = SUBTYPE_NVME
    trtype: int = TRTYPE_TCP
    adrfam: int = ADRFAM_IPV4
    treq: int = TREQ_NOT_SPECIFIED
    portid: int = 1
    cntlid: int = 0xFFFF
    asqsz: int = 32
    eflags: int = 0
    sectype: int = 0

    def pack(self) -> bytes:
        b = bytearray(DISC_ENTRY_LEN)
        struct.pack_into("<BBBBHHHH", b, 0, self.trtype, self.adrfam, self.subtype, self.treq,
                         self.portid, self.cntlid, self.asqsz, self.eflags)
        b[32:64] = _pad(self.trsvcid, 32)
        b[256:512] = _pad(self.subnqn, 256, b"\0")
        b[512:768] = _pad(self.traddr, 256)
        b[768] = self.sectype
        return bytes(b)

    @classmethod
    def unpack(cls, raw: bytes) -> "DiscoveryEntry":
        raw = bytes(raw)
        trtype, adrfam, subtype, treq, portid, cntlid, asqsz, eflags = struct.unpack_from("<BBBBHHHH", raw, 0)
        return cls(subnqn=_s(raw[256:512]), traddr=_s(raw[512:768]), trsvcid=_s(raw[32:64]), subtype=subtype,
                   trtype=trtype, adrfam=adrfam, treq=treq, portid=portid, cntlid=cntlid, asqsz=asqsz,
                   eflags=eflags, sectype=raw[768])


@dataclass(frozen=True)
class DiscoveryLog:
    genctr: int
    entries: tuple[DiscoveryEntry, ...]
    numrec: int = -1  # as announced; may exceed len(entries) when only the header was fetched

    def pack(self) -> bytes:
        head = DISC_HDR.pack(self.genctr, len(self.entries), 0).ljust(1024, b"\0")
        return head + b"".join(e.pack() for e in self.entries)

    @classmethod
    def unpack(cls, raw: bytes) -> "DiscoveryLog":
        raw = bytes(raw)
        _need(raw, 1024, "discovery log page header")
        genctr, numrec, _recfmt = DISC_HDR.unpack_from(raw, 0)
        have = min(numrec, (len(raw) - 1024) // DISC_ENTRY_LEN)
        entries = tuple(DiscoveryEntry.unpack(raw[1024 + i * DISC_ENTRY_LEN: 2048 + i * DISC_ENTRY_LEN])
                        for i in range(have))
        return cls(genctr, entries, numrec)

"""Command handling of the userspace target: one `QueueSession` per TCP connection (queue), all
sharing one `Controllers` table. Pure logic: a command capsule in, the PDUs to send back out.

Behaviour follows the Linux nvmet target where a host can tell (status codes, the property
sequence, the discovery log), and everything that would change a namespace is refused: the
exports are immutable model volumes.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field

from pifarm import nvmewire as w
from pifarm.nvmewire import status as st
from pifarm.target.userspace._exports import LBA_SHIFT, SubsystemExport, TargetConfig
from pifarm.target.userspace._limits import LimitHits

log = logging.getLogger(__name__)

CC_EN, CC_SHN_MASK = 0x1, 0x3 << 14
CSTS_RDY, CSTS_SHST_CMPLT = 0x1, 0x2 << 2
AUTHREQ_ATR = 1 << 17
AEN_NS_ATTR = 1 << 8  # OAES / AEC bit: namespace attribute notices
AEN_NS_CHANGED = 0x02 | 0x04 << 16  # AER result: notice, "namespace attribute changed", log page 04h
AERL = 4  # async event requests a host may leave with us
KAS_100MS = 10  # keep-alive granularity we announce: 1 s


@dataclass
class CtrlState:
    cntlid: int
    subsys: SubsystemExport | None  # None: the discovery controller
    hostnqn: str
    hostid: uuid.UUID
    kato_ms: int
    cc: int = 0
    csts: int = 0
    io_queues: set[int] = field(default_factory=set)
    aec: int = 0  # async event configuration the host set (Set Features 0Bh)
    last_keepalive: float = field(default_factory=time.monotonic)


class Controllers:
    """Controller ids and state shared by every queue of one server."""

    def __init__(self, config: TargetConfig):
        self.config = config
        self.ctrls: dict[int, CtrlState] = {}
        self._next = 1
        self.limits = LimitHits()

    def create(self, subsys: SubsystemExport | None, hostnqn: str, hostid: uuid.UUID, kato_ms: int) -> CtrlState:
        for _ in range(0xFFEF):
            cid, self._next = self._next, self._next % 0xFFEF + 1
            if cid not in self.ctrls:
                c = CtrlState(cid, subsys, hostnqn, hostid, kato_ms)
                self.ctrls[cid] = c
                return c
        raise RuntimeError("no free controller id")

    def drop(self, cntlid: int) -> None:
        self.ctrls.pop(cntlid, None)


class Refuse(Exception):
    """A command fails with an NVMe status (and optionally a dw0, as Connect errors carry)."""

    def __init__(self, status: int, dw0: int = 0):
        super().__init__(status)
        self.status, self.dw0 = status, dw0


def _dnr(code: int) -> int:
    return code | w.DNR


class QueueSession:
    """One queue (TCP connection) of the target."""

    def _sub(self) -> SubsystemExport | None:
        """The controller's subsystem as currently exported (volumes may come and go)."""
        c = self.ctrl
        if c is None or c.subsys is None:
            return None
        return self.shared.config.subsystem(c.subsys.nqn) or c.subsys

    def __init__(self, shared: Controllers, local_addr: tuple[str, int]):
        self.shared = shared
        self.local_addr = local_addr
        self.qid: int | None = None
        self.ctrl: CtrlState | None = None
        self.sqhd = 0
        self._fds: dict[str, int] = {}  # by backing path
        self.aers: list[int] = []  # command ids of held Asynchronous Event Requests
        self._aen_pending = False  # a namespace change to report when the next AER arrives
        self._ns_changed = False  # what the Changed Namespace List log page reports

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def kato(self) -> float | None:
        """Seconds of silence after which the admin queue is dropped (kato plus a grace)."""
        if self.ctrl and self.qid == 0 and self.ctrl.kato_ms:
            return self.ctrl.kato_ms / 1000 + self.shared.config.kato_grace
        return None

    def orphaned(self) -> bool:
        """An I/O queue whose controller is gone (its admin queue closed or timed out)."""
        return self.ctrl is None or self.shared.ctrls.get(self.ctrl.cntlid) is not self.ctrl

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self.ctrl is not None:
            if self.qid == 0:
                self.shared.drop(self.ctrl.cntlid)
            else:
                self.ctrl.io_queues.discard(self.qid or 0)

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, cmd: w.CapsuleCmd) -> list[w.Pdu]:
        """Answer one command: data PDUs (if any) then the response. [] = held (AER)."""
        sqe = cmd.sqe
        self.sqhd = (self.sqhd + 1) % max(self.shared.config.queue_size, 2)
        dw0 = dw1 = 0
        data = b""
        try:
            if sqe.sgl.length > self.shared.config.max_transfer:
                # the reply is sized by the host's SGL: never build more than MDTS allows
                self.shared.limits.hit("transfer", f"command 0x{sqe.opcode:02x} asked for {sqe.sgl.length} bytes")
                raise Refuse(_dnr(st.SGL_INVALID_DATA))
            if self.qid is None:
                if not (sqe.opcode == w.Opcode.FABRICS and sqe.fctype == w.FcType.CONNECT):
                    raise Refuse(_dnr(st.CMD_SEQ_ERROR))
                dw0 = self._connect(sqe, cmd.data)
            elif sqe.opcode == w.Opcode.FABRICS:
                dw0, dw1 = self._fabrics(sqe)
            elif self.ctrl is None or not self.ctrl.cc & CC_EN:
                raise Refuse(_dnr(st.CMD_SEQ_ERROR))
            elif self.qid == 0:
                self.ctrl.last_keepalive = time.monotonic()
                if sqe.opcode == w.Opcode.ASYNC_EVENT:
                    if len(self.aers) >= AERL:
                        raise Refuse(_dnr(0x105))
                    self.aers.append(sqe.cid)
                    return self._deliver_aen() if self._aen_pending else []
                dw0, data = self._admin(sqe)
            else:
                data = self._io(sqe)
        except Refuse as r:
            return [w.CapsuleResp(w.Cqe(sqe.cid, r.status, r.dw0, 0, self.sqhd, self.qid or 0))]
        out: list[w.Pdu] = []
        if data and sqe.sgl.length:
            want = sqe.sgl.length
            if len(data) < want:
                data = bytes(data) + bytes(want - len(data))
            out.append(w.C2HData(sqe.cid, 0, data[:want] if len(data) > want else data, last=True))
        out.append(w.CapsuleResp(w.Cqe(sqe.cid, 0, dw0, dw1, self.sqhd, self.qid or 0)))
        return out

    # -- asynchronous events -----------------------------------------------------------------

    def namespaces_changed(self) -> list[w.Pdu]:
        """The subsystem's namespaces changed: the completion to send on this admin queue now
        (or nothing, if the host has no AER outstanding yet or did not ask for such notices)."""
        if self.qid != 0 or self.ctrl is None or self.ctrl.subsys is None or not self.ctrl.aec & AEN_NS_ATTR:
            return []
        self._ns_changed = True
        self._aen_pending = True
        return self._deliver_aen() if self.aers else []

    def _deliver_aen(self) -> list[w.Pdu]:
        self._aen_pending = False
        cid = self.aers.pop(0)
        return [w.CapsuleResp(w.Cqe(cid, 0, AEN_NS_CHANGED, 0, self.sqhd, 0))]

    # -- fabrics ---------------------------------------------------------------------------

    def _connect(self, sqe: w.Sqe, body: bytes) -> int:
        recfmt, qid, sqsize, kato = w.connect_fields(sqe)
        if recfmt != 0:
            raise Refuse(_dnr(st.CONNECT_INCOMPATIBLE_FORMAT))
        if len(body) < 1024:
            raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 1 << 16)
        cd = w.ConnectData.unpack(body)
        discovery = cd.subnqn == w.DISCOVERY_NQN
        subsys = None if discovery else self.shared.config.subsystem(cd.subnqn)
        if not discovery and subsys is None:
            log.warning("connect by %s for unknown subsystem %s", cd.hostnqn, cd.subnqn)
            raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 1 << 16 | 256)
        if subsys is not None and not subsys.host_allowed(cd.hostnqn):
            log.warning("connect by host %s for subsystem %s not allowed", cd.hostnqn, cd.subnqn)
            raise Refuse(_dnr(st.CONNECT_INVALID_HOST), 1 << 16 | 512)
        if sqsize == 0 or sqsize >= self.shared.config.queue_size:
            raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 44)  # IATTR 0 (the SQE), IPO = sqsize field
        if qid == 0:
            if cd.cntlid not in (0xFFFF, 0xFFFE):
                raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 1 << 16 | 16)
            self.ctrl = self.shared.create(subsys, cd.hostnqn, cd.hostid, kato)
            self.qid = 0
            auth = AUTHREQ_ATR if subsys is not None and subsys.require_auth else 0
            return self.ctrl.cntlid | auth
        ctrl = self.shared.ctrls.get(cd.cntlid)
        if (ctrl is None or ctrl.subsys is None or subsys is None or ctrl.subsys.nqn != subsys.nqn
                or ctrl.hostnqn != cd.hostnqn or not ctrl.csts & CSTS_RDY):
            raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 1 << 16 | 16)
        if qid > self.shared.config.max_io_queues or qid in ctrl.io_queues:
            raise Refuse(_dnr(st.CONNECT_INVALID_PARAM), 42)
        ctrl.io_queues.add(qid)
        self.ctrl, self.qid = ctrl, qid
        return ctrl.cntlid

    def _fabrics(self, sqe: w.Sqe) -> tuple[int, int]:
        fct = sqe.fctype
        if fct == w.FcType.CONNECT:
            raise Refuse(_dnr(st.CMD_SEQ_ERROR))
        if fct in (w.FcType.AUTH_SEND, w.FcType.AUTH_RECEIVE):
            raise Refuse(_dnr(st.INVALID_OPCODE))
        if self.qid != 0 or self.ctrl is None:
            raise Refuse(_dnr(st.INVALID_FIELD))
        c = self.ctrl
        if fct == w.FcType.PROPERTY_GET:
            v = self._prop_get(sqe.cdw11)
            return v & 0xFFFFFFFF, v >> 32
        if fct == w.FcType.PROPERTY_SET:
            if sqe.cdw11 != w.Prop.CC:
                raise Refuse(_dnr(st.INVALID_FIELD))
            new = sqe.cdw12
            if new & CC_EN and not c.cc & CC_EN:
                c.csts = CSTS_RDY
            elif not new & CC_EN and c.cc & CC_EN:
                c.csts = 0
            if new & CC_SHN_MASK:
                c.csts = CSTS_SHST_CMPLT
            c.cc = new
            return 0, 0
        raise Refuse(_dnr(st.INVALID_OPCODE))

    def _prop_get(self, offset: int) -> int:
        c = self.ctrl
        assert c is not None
        mqes = self.shared.config.queue_size - 1
        if offset == w.Prop.CAP:
            return mqes | 1 << 16 | 0x0F << 24 | 1 << 37  # CQR, 7.5 s timeout, NVM command set
        if offset == w.Prop.VS:
            return 0x10300
        if offset == w.Prop.CC:
            return c.cc
        if offset == w.Prop.CSTS:
            return c.csts
        raise Refuse(_dnr(st.INVALID_FIELD))

    # -- admin -----------------------------------------------------------------------------

    def _admin(self, sqe: w.Sqe) -> tuple[int, bytes]:
        c = self.ctrl
        assert c is not None
        op = sqe.opcode
        if op == w.Opcode.KEEP_ALIVE:
            return 0, b""
        if op == w.Opcode.IDENTIFY:
            return 0, self._identify(sqe)
        if op == w.Opcode.GET_LOG_PAGE:
            return 0, self._log_page(sqe)
        if op in (w.Opcode.SET_FEATURES, w.Opcode.GET_FEATURES):
            fid = sqe.cdw10 & 0xFF
            if fid == w.Feature.NUM_QUEUES:
                n = self.shared.config.max_io_queues - 1
                return n | n << 16, b""
            if fid == w.Feature.ASYNC_EVENT_CONFIG:
                if op == w.Opcode.SET_FEATURES:
                    c.aec = sqe.cdw11 & AEN_NS_ATTR  # the only event we can raise
                return c.aec, b""
            if fid == w.Feature.KATO:
                if op == w.Opcode.SET_FEATURES:
                    c.kato_ms = sqe.cdw11
                return c.kato_ms, b""
            raise Refuse(_dnr(st.INVALID_FIELD))
        raise Refuse(_dnr(st.INVALID_OPCODE))

    def _identify(self, sqe: w.Sqe) -> bytes:
        c = self.ctrl
        assert c is not None
        cns = sqe.cdw10 & 0xFF
        sub = self._sub()
        if cns == w.Cns.CONTROLLER:
            cfg = self.shared.config
            return w.IdentifyController(
                serial=(sub.serial if sub and sub.serial else cfg.serial), model=cfg.model, firmware=cfg.firmware,
                mdts=cfg.mdts, cntlid=c.cntlid, ver=0x10300, lpa=0x04, kas=KAS_100MS,
                oaes=AEN_NS_ATTR if sub else 0,
                maxcmd=cfg.queue_size, nn=max((n.nsid for n in sub.namespaces), default=0) if sub else 0,
                subnqn=sub.nqn if sub else w.DISCOVERY_NQN, cntrltype=1 if sub else 2,
            ).pack()
        if sub is None:
            raise Refuse(_dnr(st.INVALID_FIELD))
        if cns == w.Cns.ACTIVE_NS_LIST:
            return w.pack_ns_list([n.nsid for n in sub.namespaces], after=sqe.nsid)
        ns = sub.namespace(sqe.nsid)
        if cns == w.Cns.NAMESPACE:
            if ns is None:
                raise Refuse(_dnr(st.INVALID_NS))
            return w.IdentifyNamespace(ns.nlb, ns.nlb, ns.nlb, LBA_SHIFT, ns.nguid, nsattr=1).pack()
        if cns == w.Cns.NS_DESCRIPTORS:
            if ns is None:
                raise Refuse(_dnr(st.INVALID_NS))
            return w.NsDescriptors(uuid=ns.uuid, nguid=ns.nguid, csi=0).pack()
        raise Refuse(_dnr(st.INVALID_FIELD))

    def _log_page(self, sqe: w.Sqe) -> bytes:
        lid, length, offset = w.log_page_fields(sqe)
        if length > self.shared.config.max_log_page:
            self.shared.limits.hit("log_page", f"log page 0x{lid:02x} of {length} bytes")
            raise Refuse(_dnr(st.INVALID_FIELD))
        if lid == w.Lid.DISCOVERY:
            if self.ctrl is None or self.ctrl.subsys is not None:
                raise Refuse(_dnr(st.INVALID_LOG_PAGE))
            page = self._discovery_log().pack()
        elif lid == w.Lid.CHANGED_NS:
            # 0xFFFFFFFF first: "more than we list", so the host rescans every namespace
            page = (b"\xff\xff\xff\xff" if self._ns_changed else b"").ljust(4096, b"\0")
            self._ns_changed = False
        elif lid in (w.Lid.ERROR, w.Lid.SMART, w.Lid.CMD_EFFECTS):
            page = bytes({w.Lid.ERROR: 64, w.Lid.SMART: 512, w.Lid.CMD_EFFECTS: 4096}[lid])
        else:
            raise Refuse(_dnr(st.INVALID_LOG_PAGE))
        if offset > len(page):
            raise Refuse(_dnr(st.INVALID_FIELD))
        return page[offset: offset + length].ljust(length, b"\0")

    def _discovery_log(self) -> w.DiscoveryLog:
        """The current discovery subsystem plus every subsystem this host may connect to."""
        c = self.ctrl
        assert c is not None
        addr, port = self.local_addr[0], str(self.local_addr[1])
        fam = w.ADRFAM_IPV6 if ":" in addr else w.ADRFAM_IPV4
        entries = [w.DiscoveryEntry(w.DISCOVERY_NQN, addr, port, w.SUBTYPE_CURRENT_DISCOVERY, adrfam=fam)]
        entries += [w.DiscoveryEntry(s.nqn, addr, port, w.SUBTYPE_NVME, adrfam=fam, asqsz=self.shared.config.queue_size)
                    for s in self.shared.config.subsystems if s.host_allowed(c.hostnqn)]
        return w.DiscoveryLog(genctr=1, entries=tuple(entries))

    # -- I/O -------------------------------------------------------------------------------

    def _io(self, sqe: w.Sqe) -> bytes:
        c = self.ctrl
        sub = self._sub()
        assert c is not None and sub is not None
        ns = sub.namespace(sqe.nsid)
        op = sqe.opcode
        if op in (w.Opcode.WRITE, w.Opcode.WRITE_ZEROES, w.Opcode.DSM):
            if ns is None:
                raise Refuse(_dnr(st.INVALID_NS))
            raise Refuse(_dnr(st.NS_WRITE_PROTECTED))
        if op == w.Opcode.FLUSH:
            return b""
        if op != w.Opcode.READ:
            raise Refuse(_dnr(st.INVALID_OPCODE))
        if ns is None:
            raise Refuse(_dnr(st.INVALID_NS))
        slba, nlb = w.rw_fields(sqe)
        if slba + nlb > ns.nlb:
            raise Refuse(_dnr(st.LBA_RANGE))
        length = nlb << LBA_SHIFT
        if length > self.shared.config.max_transfer or sqe.sgl.length < length:
            raise Refuse(_dnr(st.INVALID_FIELD))
        fd = self._fds.get(str(ns.path))
        if fd is None:
            try:
                fd = self._fds[str(ns.path)] = os.open(ns.path, os.O_RDONLY)
            except OSError as e:
                log.error("namespace %d: cannot open %s: %s", ns.nsid, ns.path, e)
                raise Refuse(_dnr(st.INTERNAL)) from e
        try:
            data = os.pread(fd, length, slba << LBA_SHIFT)
        except OSError as e:
            log.error("namespace %d: read of %s failed: %s", ns.nsid, ns.path, e)
            raise Refuse(st.UNRECOVERED_READ) from e
        return data if len(data) == length else data.ljust(length, b"\0")

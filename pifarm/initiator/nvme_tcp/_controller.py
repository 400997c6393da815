"""An NVMe-oF host controller over userspace NVMe/TCP: connect, enable, identify, read, keep
alive, discovery log, orderly shutdown. Every exchange has a deadline (the queues enforce it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass

from pifarm.errors import NotFound, SourceError, SourceTimeout, UsageError
from pifarm import nvmewire as w
from pifarm.initiator.nvme_tcp import _auth
from pifarm.initiator.nvme_tcp._driver import SOURCE
from pifarm.initiator.nvme_tcp._queue import HostQueue

log = logging.getLogger(__name__)

AUTH_MESSAGE = ("authentication required: the target demands DH-HMAC-CHAP and no secret was given "
                "(pass this host's DHHC-1 secret: --dhchap-secret / options.dhchap_secret)")
AUTHREQ_ATR = 1 << 17  # Connect response dw0: authentication transaction required
AUTHREQ_ASCR = 1 << 18  # ... secure channel concatenation (TLS) required
CC_ENABLE_FIELDS = 4 << 20 | 6 << 16  # IOCQES 16 B, IOSQES 64 B, MPS 4 KiB, NVM command set
CC_SHN_NORMAL = 1 << 14
MAX_READ = 1 << 20  # even without an MDTS, one command moves at most 1 MiB
NQN_UUID = re.compile(r"^nqn\.2014-08\.org\.nvmexpress:uuid:([0-9a-fA-F-]{36})\Z")


def parse_address(text: str, default_port: int = 4420) -> tuple[str, int]:
    """"host", "host:port", "[v6]:port" → (host, port)."""
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?\Z", text) or re.match(r"^([^:\[\]]+)(?::(\d+))?\Z", text)
    if not m or not m.group(1):
        raise UsageError(f"not a target address: {text!r} (expected HOST or HOST:PORT)")
    port = int(m.group(2)) if m.group(2) else default_port
    if not 0 < port < 65536:
        raise UsageError(f"port {port} out of range in {text!r}")
    return m.group(1), port


def host_id_for(hostnqn: str) -> uuid.UUID:
    """The host ID: the UUID inside a uuid-form NQN, else a stable UUID derived from the NQN."""
    m = NQN_UUID.match(hostnqn)
    return uuid.UUID(m.group(1)) if m else uuid.uuid5(uuid.NAMESPACE_URL, hostnqn)


@dataclass(frozen=True)
class ConnectParams:
    host: str
    port: int = 4420
    subnqn: str = w.DISCOVERY_NQN
    hostnqn: str = ""
    hostid: uuid.UUID | None = None
    hdgst: bool = False
    ddgst: bool = False
    kato_ms: int = 5000  # 0 disables keep-alive (discovery controllers)
    io_queues: int = 1
    queue_depth: int = 32
    timeout: float = 10.0
    dhchap_secret: str | None = None  # DHHC-1 host secret, used only if the target asks for it

    def __post_init__(self) -> None:
        if not self.hostnqn.startswith("nqn."):
            raise UsageError(f"host NQN {self.hostnqn!r} must start with 'nqn.' (e.g. nqn.2014-08.org.nvmexpress:uuid:<uuid>)")
        if not self.subnqn.startswith("nqn."):
            raise UsageError(f"subsystem NQN {self.subnqn!r} must start with 'nqn.'")
        if self.dhchap_secret:
            _auth.DhchapKey.parse(self.dhchap_secret)  # a malformed key is a config error now, not at connect
        if not 1 <= self.io_queues <= 64 or not 2 <= self.queue_depth <= 1024 or self.timeout <= 0:
            raise UsageError("io_queues must be 1-64, queue_depth 2-1024, timeout > 0")

    @property
    def discovery(self) -> bool:
        return self.subnqn == w.DISCOVERY_NQN

    @property
    def where(self) -> str:
        return f"{self.subnqn} at {self.host}:{self.port}"


@dataclass(frozen=True)
class NamespaceInfo:
    nsid: int
    nsze: int
    lba_size: int
    uuid: uuid.UUID | None
    nguid: bytes | None
    write_protected: bool

    @property
    def size(self) -> int:
        return self.nsze * self.lba_size


class Controller:
    """Use `await Controller.connect(params)`; `await close()` shuts it down in order."""

    def __init__(self, params: ConnectParams):
        self.params = params
        self.admin: HostQueue | None = None
        self.io: list[HostQueue] = []
        self.cntlid = 0
        self.cap = 0
        self.ident: w.IdentifyController | None = None
        self.max_transfer = MAX_READ
        self._ka: asyncio.Task | None = None
        self._rr = 0
        self.shutdown_status: int | None = None  # CSTS.SHST seen by close(); 2 = complete

    # -- connect ---------------------------------------------------------------------------

    @classmethod
    async def connect(cls, params: ConnectParams) -> "Controller":
        c = cls(params)
        try:
            await c._connect()
        except BaseException:
            await c.abort()
            raise
        return c

    def _queue(self, qid: int, depth: int) -> HostQueue:
        p = self.params
        return HostQueue(p.host, p.port, qid, depth, p.timeout, p.hdgst, p.ddgst, max_data=max(self.max_transfer, 1 << 16))

    async def _connect_queue(self, q: HostQueue, sqsize: int, kato_ms: int, cntlid: int) -> int:
        p = self.params
        await q.open()
        hostid = p.hostid or host_id_for(p.hostnqn)
        sqe, data = w.connect_cmd(q.qid, sqsize, kato_ms, w.ConnectData(hostid, cntlid, p.subnqn, p.hostnqn))
        cqe, _ = await q.submit(sqe, data, "Fabrics Connect")
        needs_auth = cqe.status & 0x7FF == w.status.AUTH_REQUIRED or (cqe.status == 0 and cqe.dw0 & AUTHREQ_ATR)
        if needs_auth and not p.dhchap_secret:
            raise w.NvmeStatusError(f"connect to {p.where} as {p.hostnqn}: {AUTH_MESSAGE}", w.status.AUTH_REQUIRED | w.DNR)
        if cqe.status == 0 and cqe.dw0 & AUTHREQ_ASCR:
            raise w.NvmeStatusError(f"connect to {p.where}: the target requires a TLS secure channel, "
                                    "which this initiator does not support", w.status.AUTH_REQUIRED | w.DNR)
        w.check_status(cqe.status, f"connect queue {q.qid} to {p.where} as {p.hostnqn}")
        if needs_auth:
            await self._authenticate(q)
        return cqe.dw0 & 0xFFFF

    async def _authenticate(self, q: HostQueue) -> None:
        """DH-HMAC-CHAP on one queue (see `_auth`); any refusal is one clear NvmeStatusError."""
        p = self.params
        key = _auth.DhchapKey.parse(p.dhchap_secret or "")
        t_id, where = q.qid, f"DH-HMAC-CHAP on queue {q.qid} of {p.where} as {p.hostnqn}"

        async def send(msg: bytes, what: str) -> None:
            sqe, data = w.auth_send(msg)
            cqe, _ = await q.submit(sqe, data, f"Authentication Send ({what})")
            w.check_status(cqe.status, f"{where}: sending {what}")

        async def receive(what: str) -> bytes:
            cqe, data = await q.submit(w.auth_receive(4096), what=f"Authentication Receive ({what})")
            w.check_status(cqe.status, f"{where}: receiving {what}")
            return bytes(data)

        await send(_auth.negotiate(t_id), "negotiate")
        ch = _auth.parse_challenge(await receive("challenge"), t_id, where)
        await send(_auth.reply(key, ch, t_id, p.hostnqn, p.subnqn), "reply")
        _auth.check_success1(await receive("success1"), t_id, where)
        log.info("%s: authenticated (hash %s, NULL DH group)", where, _auth.HASHES[ch.hashid])

    async def _connect(self) -> None:
        p = self.params
        self.admin = self._queue(0, 31)
        self.cntlid = await self._connect_queue(self.admin, 31, p.kato_ms, 0xFFFF)
        self.cap = await self.property_get(w.Prop.CAP, size8=True)
        await self.property_get(w.Prop.VS)  # the init sequence of Linux's host: CAP, VS, enable
        await self._enable()
        self.ident = await self.identify_controller()
        mdts = self.ident.max_transfer(4096 << ((self.cap >> 48) & 0xF))
        self.max_transfer = min(MAX_READ, mdts) if mdts else MAX_READ
        if p.kato_ms:
            self._ka = asyncio.get_running_loop().create_task(self._keep_alive(p.kato_ms / 2000))
        if p.discovery:
            return
        cqe, _ = await self._admin(w.set_features(w.Feature.NUM_QUEUES, (p.io_queues - 1) * 0x10001), "Set Features (queues)")
        granted = min(p.io_queues, (cqe.dw0 & 0xFFFF) + 1, ((cqe.dw0 >> 16) & 0xFFFF) + 1)
        mqes = self.cap & 0xFFFF
        depth = max(1, min(p.queue_depth, mqes))
        for qid in range(1, granted + 1):
            q = self._queue(qid, depth)
            self.io.append(q)
            await self._connect_queue(q, depth, 0, self.cntlid)

    async def _enable(self) -> None:
        await self.property_set(w.Prop.CC, CC_ENABLE_FIELDS)
        await self.property_set(w.Prop.CC, CC_ENABLE_FIELDS | 1)
        limit = max(0.5, ((self.cap >> 24) & 0xFF) * 0.5)  # CAP.TO, in 500 ms units
        await self._poll_csts(lambda v: v & 1, limit, "become ready (CSTS.RDY)")

    async def _poll_csts(self, done, limit: float, what: str) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        delay = 0.005
        while True:
            v = await self.property_get(w.Prop.CSTS)
            if v & 0x2:
                raise SourceError(f"controller {self.params.where} reports a fatal status (CSTS.CFS)", SOURCE)
            if done(v):
                return v
            if loop.time() >= deadline:
                raise SourceTimeout(f"controller {self.params.where} did not {what} within {limit:g} s", SOURCE)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    # -- admin commands ----------------------------------------------------------------------

    async def _admin(self, sqe: w.Sqe, what: str) -> tuple[w.Cqe, bytearray]:
        assert self.admin is not None
        cqe, data = await self.admin.submit(sqe, what=what)
        w.check_status(cqe.status, f"{what} on {self.params.where}")
        return cqe, data

    async def property_get(self, offset: int, size8: bool = False) -> int:
        cqe, _ = await self._admin(w.property_get(offset, size8), f"Property Get 0x{offset:x}")
        return cqe.result64 if size8 else cqe.dw0

    async def property_set(self, offset: int, value: int) -> None:
        await self._admin(w.property_set(offset, value), f"Property Set 0x{offset:x}")

    async def identify_controller(self) -> w.IdentifyController:
        _, data = await self._admin(w.identify(w.Cns.CONTROLLER), "Identify Controller")
        return w.IdentifyController.unpack(bytes(data))

    async def namespace_ids(self) -> list[int]:
        out: list[int] = []
        after = 0
        for _ in range(4096):  # 1024 ids a page; bounded by the 32-bit nsid space we accept
            _, data = await self._admin(w.identify(w.Cns.ACTIVE_NS_LIST, nsid=after), "Identify active namespace list")
            ids = w.unpack_ns_list(bytes(data))
            out += ids
            if len(ids) < 1024:
                break
            after = ids[-1]
        return out

    async def namespace(self, nsid: int) -> NamespaceInfo:
        _, data = await self._admin(w.identify(w.Cns.NAMESPACE, nsid), f"Identify Namespace {nsid}")
        ns = w.IdentifyNamespace.unpack(bytes(data))
        if ns.nsze == 0:
            raise NotFound(f"namespace {nsid} on {self.params.where} is not active")
        try:
            _, data = await self._admin(w.identify(w.Cns.NS_DESCRIPTORS, nsid), f"Identify descriptors of namespace {nsid}")
            desc = w.NsDescriptors.unpack(bytes(data))
        except w.NvmeStatusError:
            desc = w.NsDescriptors()  # pre-1.3 controllers: NGUID from Identify Namespace only
        nguid = desc.nguid or (ns.nguid if any(ns.nguid) else None)
        return NamespaceInfo(nsid, ns.nsze, ns.lba_size, desc.uuid, nguid, ns.write_protected)

    async def namespaces(self) -> list[NamespaceInfo]:
        return [await self.namespace(n) for n in await self.namespace_ids()]

    async def find_namespace(self, ns_uuid: uuid.UUID) -> NamespaceInfo:
        for ns in await self.namespaces():
            if ns.uuid == ns_uuid:
                return ns
        raise NotFound(f"no namespace with UUID {ns_uuid} on {self.params.where}")

    async def discovery_log(self) -> w.DiscoveryLog:
        for _ in range(3):  # the generation counter must not move between header and entries
            _, head = await self._admin(w.get_log_page(w.Lid.DISCOVERY, 1024), "Get Log Page (discovery)")
            first = w.DiscoveryLog.unpack(bytes(head))
            n = min(first.numrec, 1023)  # header + entries stay within one 1 MiB transfer
            if n == 0:
                return first
            _, full = await self._admin(w.get_log_page(w.Lid.DISCOVERY, 1024 * (n + 1)), "Get Log Page (discovery)")
            log_ = w.DiscoveryLog.unpack(bytes(full))
            if log_.genctr == first.genctr:
                return log_
        raise SourceError(f"discovery log of {self.params.host}:{self.params.port} kept changing", SOURCE)

    async def _keep_alive(self, period: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while self.admin is not None and self.admin.alive:
                await asyncio.sleep(period)
                try:
                    await self._admin(w.keep_alive(), "Keep Alive")
                except Exception as e:  # the queue now holds the error; the next caller sees it
                    log.warning("keep-alive to %s failed: %s", self.params.where, e)
                    return

    # -- I/O -------------------------------------------------------------------------------

    async def read(self, ns: NamespaceInfo, offset: int, length: int) -> bytearray:
        """Bytes [offset, offset+length) of a namespace, in MDTS-sized pipelined Reads."""
        buf = bytearray(length)
        await self.read_into(ns, offset, memoryview(buf))
        return buf

    async def read_into(self, ns: NamespaceInfo, offset: int, dest: memoryview) -> None:
        """Fill `dest` from namespace byte `offset`. Block-aligned spans land in `dest` directly;
        a ragged head or tail goes through one small bounce buffer."""
        length = len(dest)
        if offset < 0 or offset + length > ns.size:
            raise UsageError(f"read {offset}+{length} outside namespace {ns.nsid} ({ns.size} bytes)")
        if length == 0:
            return
        if not self.io:
            raise UsageError(f"{self.params.where} has no I/O queues (a discovery controller cannot read)")
        lba = ns.lba_size
        head = -offset % lba
        if head or length % lba:
            first = offset // lba * lba
            body = min(length, head) if head else 0
            # aligned middle straight into dest, ragged ends via bounce buffers
            mid_start = offset + body
            mid_len = (length - body) // lba * lba
            tasks = []
            if body:
                tasks.append(self._bounce(ns, first, offset - first, dest[:body]))
            if mid_len:
                tasks.append(self.read_into(ns, mid_start, dest[body: body + mid_len]))
            tail = length - body - mid_len
            if tail:
                tasks.append(self._bounce(ns, offset + body + mid_len, 0, dest[body + mid_len:]))
            await asyncio.gather(*tasks)
            return
        per = max(1, min(self.max_transfer // lba, 0x10000)) * lba
        await asyncio.gather(*(self._read_blocks(ns, (offset + i) // lba, dest[i: i + per])
                               for i in range(0, length, per)))

    async def _bounce(self, ns: NamespaceInfo, start: int, skip: int, dest: memoryview) -> None:
        blk = bytearray(ns.lba_size)
        await self._read_blocks(ns, start // ns.lba_size, memoryview(blk))
        dest[:] = blk[skip: skip + len(dest)]

    async def _read_blocks(self, ns: NamespaceInfo, slba: int, dest: memoryview) -> None:
        nlb = len(dest) // ns.lba_size
        q = self.io[self._rr % len(self.io)]
        self._rr += 1
        cqe, _ = await q.submit(w.read_cmd(ns.nsid, slba, nlb, ns.lba_size), what=f"Read nsid {ns.nsid} lba {slba}+{nlb}",
                                dest=dest)
        w.check_status(cqe.status, f"Read of namespace {ns.nsid} blocks {slba}+{nlb} on {self.params.where}")

    async def write_blocks(self, ns: NamespaceInfo, slba: int, nlb: int) -> None:
        """Issue a Write without data (the target must refuse before asking for it); tests use it
        to prove a read-only export stays read-only."""
        q = self.io[0]
        cqe, _ = await q.submit(w.write_cmd(ns.nsid, slba, nlb, ns.lba_size), what="Write")
        w.check_status(cqe.status, f"Write to namespace {ns.nsid} on {self.params.where}")

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Orderly: drop I/O queues, CC.SHN = normal, wait for CSTS.SHST = complete, close admin."""
        if self._ka is not None:
            self._ka.cancel()
        for q in self.io:
            await q.close()
        self.io = []
        if self.admin is not None and self.admin.alive:
            try:
                cc = await self.property_get(w.Prop.CC)
                await self.property_set(w.Prop.CC, cc | CC_SHN_NORMAL)
                csts = await self._poll_csts(lambda v: (v >> 2) & 3 == 2, 5.0, "finish shutting down")
                self.shutdown_status = (csts >> 2) & 3
            except Exception as e:
                log.info("shutdown of %s was not orderly: %s", self.params.where, e)
        await self.abort()

    async def abort(self) -> None:
        if self._ka is not None:
            self._ka.cancel()
            with contextlib.suppress(BaseException):
                await self._ka
        for q in self.io + ([self.admin] if self.admin else []):
            await q.close()
        self.io, self.admin = [], None

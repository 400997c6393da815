"""One host queue: command ids, commands in flight, C2HData placed into each command's buffer,
completions matched to their waiters, a deadline on every exchange.

Several commands may be in flight at once (up to `depth`); each waits on its own future, so
reads pipeline on one TCP stream. Any protocol failure, timeout or disconnect fails every waiter
with the same clear error and leaves the queue closed: the controller layer reconnects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pifarm.errors import SourceError, SourceTimeout, UsageError
from pifarm import nvmewire as w
from pifarm.initiator.nvme_tcp._driver import SOURCE, Driver


@dataclass
class _Pending:
    sqe: w.Sqe
    future: asyncio.Future
    buf: bytearray | memoryview
    received: int = 0


class HostQueue:
    def __init__(self, host: str, port: int, qid: int, depth: int, timeout: float,
                 hdgst: bool = False, ddgst: bool = False, max_data: int = 4 << 20):
        self.qid = qid
        self.timeout = timeout
        self.hdgst, self.ddgst = hdgst, ddgst
        self.codec = w.Codec(w.Role.HOST, max_data=max_data)
        self.driver = Driver(host, port, self.codec, self._on_pdu, self._on_close)
        self._free = list(range(depth - 1, -1, -1))
        self._slots = asyncio.Semaphore(depth)
        self._pending: dict[int, _Pending] = {}
        self._ic: asyncio.Future | None = None
        self.error: BaseException | None = None
        self.codec.placement = self._place

    @property
    def where(self) -> str:
        return f"{self.driver.where} queue {self.qid}"

    @property
    def alive(self) -> bool:
        return self.error is None and not self.driver.closed

    async def open(self) -> w.ICResp:
        """TCP connect and the ICReq/ICResp exchange (digests as asked; the controller decides)."""
        await self.driver.open(self.timeout)
        self._ic = asyncio.get_running_loop().create_future()
        self.driver.send(w.ICReq(hdgst=self.hdgst, ddgst=self.ddgst))
        resp = await self._wait(self._ic, "ICReq")
        if resp.pfv != 0:
            raise w.RemoteProtocolError(f"{self.where}: controller speaks PDU format version {resp.pfv}, not 0")
        if (resp.hdgst, resp.ddgst) != (self.hdgst, self.ddgst):
            raise SourceError(
                f"{self.where}: controller answered digests header={resp.hdgst} data={resp.ddgst}, "
                f"asked header={self.hdgst} data={self.ddgst}", SOURCE)
        return resp

    async def submit(self, sqe: w.Sqe, data: bytes = b"", what: str = "",
                     dest: memoryview | None = None) -> tuple[w.Cqe, bytearray | memoryview]:
        """Send one command and wait for its completion: (CQE, data read). Status is not checked.
        Read data lands in `dest` when given (its length must be the SGL length), saving a copy."""
        if dest is not None and len(dest) != sqe.sgl.length:
            raise UsageError(f"destination of {len(dest)} bytes for a {sqe.sgl.length}-byte transfer")
        if not self.alive:
            raise self._closed_error()
        # The slot and the command id belong to the command until its completion arrives
        # (`_complete` frees them), so a caller that gives up early cannot let a late answer
        # land on a reused command id.
        await self._slots.acquire()
        if not self.alive:
            self._slots.release()
            raise self._closed_error()
        cid = self._free.pop()
        fut = asyncio.get_running_loop().create_future()
        buf = dest if dest is not None else bytearray(sqe.sgl.length if not data else 0)
        p = self._pending[cid] = _Pending(sqe, fut, buf)
        try:
            self.driver.send(w.CapsuleCmd(sqe.with_cid(cid), data))
            await self.driver.drain(self.timeout)
            cqe = await self._wait(fut, what or f"opcode 0x{sqe.opcode:02x}")
        except asyncio.CancelledError:
            if p.buf is dest and dest is not None:
                p.buf = bytearray(len(dest))  # late data must not touch the caller's buffer any more
            raise
        return cqe, fut.result()[1]

    async def _wait(self, fut: asyncio.Future, what: str):
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            err = SourceTimeout(f"{self.where}: no answer to {what} within {self.timeout:g} s", SOURCE)
            self._fail(err)
            await self.driver.close()
            raise err from None
        return res[0] if isinstance(res, tuple) else res

    # -- callbacks from the driver ---------------------------------------------------------

    def _place(self, cid: int, offset: int, length: int) -> memoryview | None:
        """Where the codec may copy C2HData for `cid` directly (None: let _on_pdu judge it)."""
        p = self._pending.get(cid)
        if p is None or offset + length > len(p.buf):
            return None
        return memoryview(p.buf)[offset: offset + length]

    def _on_pdu(self, pdu: w.Pdu) -> None:
        if isinstance(pdu, w.ICResp):
            if self._ic is not None and not self._ic.done():
                self._ic.set_result(pdu)
            return
        if isinstance(pdu, w.TermReq):
            raise w.RemoteProtocolError(
                f"{self.where}: target terminated the connection (fatal error status 0x{pdu.fes:x}, field {pdu.fei})",
                pdu.fes, pdu.fei)
        if isinstance(pdu, w.R2T):
            raise w.RemoteProtocolError(f"{self.where}: unexpected R2T for cid {pdu.cccid} (this host sends no data)",
                                        w.Fes.PDU_SEQUENCE_ERROR)
        cid = pdu.cqe.cid if isinstance(pdu, w.CapsuleResp) else pdu.cccid  # type: ignore[union-attr]
        p = self._pending.get(cid)
        if p is None:
            raise w.RemoteProtocolError(f"{self.where}: {type(pdu).__name__} for command id {cid}, which is not in flight",
                                        w.Fes.PDU_SEQUENCE_ERROR)
        if isinstance(pdu, w.C2HData):
            end = pdu.offset + len(pdu.data)
            if end > len(p.buf):
                raise w.RemoteProtocolError(
                    f"{self.where}: C2HData for cid {cid} writes bytes {pdu.offset}..{end}, the command asked for {len(p.buf)}",
                    w.Fes.DATA_OUT_OF_RANGE)
            data = pdu.data
            if not (isinstance(data, memoryview) and data.obj is (p.buf.obj if isinstance(p.buf, memoryview) else p.buf)):
                p.buf[pdu.offset:end] = data  # not placed by the codec: copy it in
            p.received += len(pdu.data)
            if pdu.success:
                self._complete(p, w.Cqe(cid))
            return
        self._complete(p, pdu.cqe)  # type: ignore[union-attr]

    def _complete(self, p: _Pending, cqe: w.Cqe) -> None:
        if cqe.status & 0x7FF == 0 and p.received != len(p.buf):
            raise w.RemoteProtocolError(
                f"{self.where}: command {cqe.cid} completed after {p.received} of {len(p.buf)} data bytes",
                w.Fes.PDU_SEQUENCE_ERROR)
        del self._pending[cqe.cid]
        self._free.append(cqe.cid)
        self._slots.release()
        if not p.future.done():
            p.future.set_result((cqe, p.buf))

    def _on_close(self, err: BaseException | None) -> None:
        self._fail(err or SourceError(f"{self.where} closed", SOURCE))

    def _fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
        for fut in [self._ic] + [p.future for p in self._pending.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(self.error)
                fut.exception()  # waiters re-raise it; a waiter that already gave up must not log it
        for _ in range(len(self._pending)):  # wake anyone waiting for a slot: they will see the error
            self._slots.release()
        self._pending.clear()

    def _closed_error(self) -> BaseException:
        e = self.error
        if isinstance(e, w.RemoteProtocolError):
            return w.RemoteProtocolError(str(e), e.fes, e.fei)
        if isinstance(e, SourceTimeout):
            return SourceTimeout(str(e), SOURCE)
        return SourceError(str(e) if e else f"{self.where} is closed", SOURCE)

    async def close(self) -> None:
        self._fail(SourceError(f"{self.where} closed by the host", SOURCE))
        await self.driver.close()

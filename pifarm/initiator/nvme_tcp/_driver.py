"""The asyncio socket driver of one NVMe/TCP queue: moves bytes between a TCP connection and a
`Codec`, hands every decoded PDU to a callback, reports the end of the connection. It does no
parsing and knows no NVMe; the codec and the queue logic do.

A plain `asyncio.Protocol` rather than streams: received chunks go straight into the codec, which
parses PDUs in place, so read data is copied once (into the caller's buffer) after the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable

from pifarm.errors import SourceError, SourceTimeout
from pifarm import nvmewire as w

SOURCE = "nvme-tcp-userspace"
RECV_SIZE = 1 << 20


class Driver(asyncio.Protocol):
    """`await open()`, then `send(pdu)`; PDUs arrive at `on_pdu`, the end at `on_close(err)`."""

    def __init__(self, host: str, port: int, codec: w.Codec,
                 on_pdu: Callable[[w.Pdu], None], on_close: Callable[[BaseException | None], None]):
        self.host, self.port = host, port
        self.codec = codec
        self.on_pdu = on_pdu
        self.on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self._reported = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port), timeout)
        except asyncio.TimeoutError as e:
            raise SourceTimeout(f"NVMe/TCP connect to {self.where} timed out after {timeout:g} s", SOURCE) from e
        except OSError as e:
            raise SourceError(f"NVMe/TCP connect to {self.where} failed: {e.strerror or e}", SOURCE) from e

    def send(self, pdu: w.Pdu) -> None:
        if self.closed or self._transport is None:
            raise SourceError(f"NVMe/TCP queue to {self.where} is closed", SOURCE)
        for part in self.codec.encode_parts(pdu):
            self._transport.write(part)

    async def drain(self, timeout: float) -> None:
        if self._writable.is_set():
            return
        try:
            await asyncio.wait_for(self._writable.wait(), timeout)
        except asyncio.TimeoutError as e:
            raise SourceTimeout(f"NVMe/TCP send to {self.where} stalled for {timeout:g} s", SOURCE) from e
        if self.closed:
            raise SourceError(f"NVMe/TCP connection to {self.where} lost", SOURCE)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # Fewer, larger reads: each wake-up costs interpreter time, so take up to 1 MiB per recv
        # (asyncio's default is 256 KiB) from a receive buffer big enough to hold that much.
        if hasattr(transport, "max_size"):
            transport.max_size = RECV_SIZE  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * RECV_SIZE)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.codec.feed(data)
            while (pdu := self.codec.next_pdu()) is not w.NEED_DATA:
                self.on_pdu(pdu)
        except w.RemoteProtocolError as e:
            with contextlib.suppress(Exception):
                self.send(w.TermReq(e.fes, e.fei, from_host=True))
            self._finish(e)
        except Exception as e:  # a bug in a callback must still fail the waiters, not hang them
            self._finish(e)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            err: BaseException = SourceError(f"NVMe/TCP connection to {self.where} lost: {exc}", SOURCE)
        else:
            err = self.codec.eof_error() or SourceError(f"NVMe/TCP target {self.where} closed the connection", SOURCE)
        self._finish(err)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- shutdown ----------------------------------------------------------------------------

    def _finish(self, err: BaseException | None) -> None:
        self.closed = True
        self._writable.set()
        self.codec.close()
        if self._transport is not None:
            self._transport.close()
        if not self._reported:
            self._reported = True
            self.on_close(err)

    async def close(self) -> None:
        self._finish(SourceError(f"NVMe/TCP queue to {self.where} closed", SOURCE))

"""The asyncio socket driver of one NVMe/TCP queue: moves bytes between a TCP connection and a
`Codec`, hands every decoded PDU to a callback, reports the end of the connection. It does no
parsing and knows no NVMe; the codec and the queue logic do."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable

from pifarm.errors import SourceError, SourceTimeout
from pifarm.registry import nvme_wire as w

READ_SIZE = 1 << 20
SOURCE = "nvme-tcp-userspace"


class Driver:
    """`await open()`, then `send(pdu)`; PDUs arrive at `on_pdu`, the end at `on_close(err)`."""

    def __init__(self, host: str, port: int, codec: w.Codec,
                 on_pdu: Callable[[w.Pdu], None], on_close: Callable[[BaseException | None], None]):
        self.host, self.port = host, port
        self.codec = codec
        self.on_pdu = on_pdu
        self.on_close = on_close
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.closed = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self, timeout: float) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=READ_SIZE), timeout)
        except asyncio.TimeoutError as e:
            raise SourceTimeout(f"NVMe/TCP connect to {self.where} timed out after {timeout:g} s", SOURCE) from e
        except OSError as e:
            raise SourceError(f"NVMe/TCP connect to {self.where} failed: {e.strerror or e}", SOURCE) from e
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def send(self, pdu: w.Pdu) -> None:
        if self.closed or self._writer is None:
            raise SourceError(f"NVMe/TCP queue to {self.where} is closed", SOURCE)
        self._writer.write(self.codec.encode(pdu))

    async def drain(self, timeout: float) -> None:
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except asyncio.TimeoutError as e:
            raise SourceTimeout(f"NVMe/TCP send to {self.where} stalled for {timeout:g} s", SOURCE) from e
        except ConnectionError as e:
            raise SourceError(f"NVMe/TCP connection to {self.where} lost: {e}", SOURCE) from e

    async def _pump(self) -> None:
        assert self._reader is not None
        err: BaseException | None = None
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    err = self.codec.eof_error() or SourceError(
                        f"NVMe/TCP target {self.where} closed the connection", SOURCE)
                    break
                self.codec.feed(data)
                while (pdu := self.codec.next_pdu()) is not w.NEED_DATA:
                    self.on_pdu(pdu)
        except asyncio.CancelledError:
            err = SourceError(f"NVMe/TCP queue to {self.where} closed", SOURCE)
        except (ConnectionError, OSError) as e:
            err = SourceError(f"NVMe/TCP connection to {self.where} lost: {e}", SOURCE)
        except w.RemoteProtocolError as e:
            err = e
            with contextlib.suppress(Exception):
                self.send(w.TermReq(e.fes, e.fei, from_host=True))
        except BaseException as e:  # a bug in a callback must still fail the waiters, not hang them
            err = e
        finally:
            self._shutdown()
            self.on_close(err)

    def _shutdown(self) -> None:
        self.closed = True
        self.codec.close()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()

    async def close(self) -> None:
        self._shutdown()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)

"""The userspace target's socket side: asyncio TCP server, one codec + QueueSession per
connection. No NVMe logic here (that is `_controller`), no parsing (that is the codec)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Callable

from pifarm.errors import UsageError
from pifarm import nvmewire as w
from pifarm.target.userspace._controller import Controllers, QueueSession
from pifarm.target.userspace._exports import TargetConfig

log = logging.getLogger(__name__)
IC_TIMEOUT = 10.0  # a connection that sends no ICReq this long is dropped
IO_QUEUE_CHECK = 5.0  # how often an idle I/O queue checks that its controller still exists
READ_SIZE = 1 << 18


class UserspaceTarget:
    """`await start()` binds and returns (host, port); `await stop()` closes every queue."""

    def __init__(self, config: TargetConfig):
        self.config = config
        self.controllers = Controllers(config)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()
        self._admin: dict[QueueSession, tuple[w.Codec, asyncio.StreamWriter]] = {}
        self.peak_queued = 0  # most reply bytes ever queued on one connection (tests, bench)

    async def start(self) -> tuple[str, int]:
        try:
            self._server = await asyncio.start_server(self._on_conn, self.config.host, self.config.port)
        except OSError as e:
            raise UsageError(f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror}") from e
        host, port = self._server.sockets[0].getsockname()[:2]
        log.info("userspace NVMe/TCP target listening on %s:%d (%d subsystems)", host, port, len(self.config.subsystems))
        return host, port

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def watch(self, rescan: Callable[[], TargetConfig], interval: float = 2.0) -> None:
        """Rebuild the exports every `interval` s with `rescan` (run in a worker thread)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                new = await loop.run_in_executor(None, rescan)
            except Exception as e:  # a bad scan keeps the previous exports
                log.warning("rescanning exports failed: %s", e)
                continue
            if new != self.config:
                log.info("exports changed: %d subsystems, %d namespaces", len(new.subsystems),
                         sum(len(s.namespaces) for s in new.subsystems))
                self.set_config(new)

    def set_config(self, config: TargetConfig) -> None:
        """Swap the exports (new volumes, retired ones); connected controllers see it at once,
        and hosts that asked for namespace notices get an asynchronous event."""
        old = {s.nqn: s.namespaces for s in self.config.subsystems}
        self.config = self.controllers.config = config
        changed = {s.nqn for s in config.subsystems if old.get(s.nqn) != s.namespaces}
        for session, (codec, writer) in list(self._admin.items()):
            ctrl = session.ctrl
            if ctrl is None or ctrl.subsys is None or ctrl.subsys.nqn not in changed or writer.is_closing():
                continue
            for pdu in session.namespaces_changed():
                writer.write(codec.encode(pdu))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # cancel until every queue is gone: Python 3.11's wait_for can swallow a cancellation
        # that lands just as the awaited read or drain completes
        while self._conns:
            for t in list(self._conns):
                t.cancel()
            await asyncio.wait(list(self._conns), timeout=0.5)
            self._conns -= {t for t in self._conns if t.done()}  # a finished task is gone, however it ended
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        if len(self._conns) >= self.config.max_connections:
            self.controllers.limits.hit("connections", f"{self.config.max_connections} queues open, refusing {peer}")
            writer.transport.abort()
            return
        self._conns.add(task)
        # replies past this many queued bytes pause us until the host reads (drain below)
        writer.transport.set_write_buffer_limits(high=self.config.max_queued)
        codec = w.Codec(w.Role.CONTROLLER, max_data=self.config.max_transfer)
        session = QueueSession(self.controllers, writer.get_extra_info("sockname")[:2])
        try:
            while True:
                io_queue = bool(session.qid)
                if codec.state is w.State.IDLE:
                    timeout = IC_TIMEOUT
                elif io_queue:  # I/O queues may idle for hours; they live as long as their controller
                    timeout = IO_QUEUE_CHECK
                else:
                    timeout = session.kato or self.config.idle_timeout
                try:
                    data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                except asyncio.TimeoutError:
                    if io_queue and not session.orphaned():
                        continue
                    log.warning("queue %s from %s: no traffic for %.0f s (keep-alive expired or controller gone), "
                                "closing", session.qid, peer, timeout)
                    return
                if not data:
                    return
                codec.feed(data)
                while (pdu := codec.next_pdu()) is not w.NEED_DATA:
                    if not self._on_pdu(codec, session, pdu, writer):
                        return
                    # one reply at a time past the high-water mark: a host that sends commands
                    # and never reads the replies holds at most max_queued + one reply of ours
                    queued = writer.transport.get_write_buffer_size()
                    self.peak_queued = max(self.peak_queued, queued)
                    if queued > self.config.max_queued and not await self._drain(writer, peer):
                        return
                if session.qid == 0:
                    self._admin[session] = (codec, writer)
        except w.RemoteProtocolError as e:
            log.warning("queue %s from %s: %s; sending a termination request", session.qid, peer, e)
            with contextlib.suppress(Exception):
                writer.write(codec.encode(w.TermReq(e.fes, e.fei, from_host=False)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            # leave the set before the last await: stop() cancels again every 0.5 s, and a
            # cancellation landing in wait_closed() must not leave a finished task behind in it
            self._conns.discard(task)
            self._admin.pop(session, None)
            session.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _drain(self, writer: asyncio.StreamWriter, peer: object) -> bool:
        try:
            await asyncio.wait_for(writer.drain(), self.config.send_timeout)
        except asyncio.TimeoutError:
            self.controllers.limits.hit("send_timeout", f"{peer} read none of its replies for "
                                        f"{self.config.send_timeout:.0f} s")
            writer.transport.abort()
            return False
        return True

    @staticmethod
    def _on_pdu(codec: w.Codec, session: QueueSession, pdu: w.Pdu, writer: asyncio.StreamWriter) -> bool:
        if isinstance(pdu, w.ICReq):
            if pdu.pfv != 0:
                raise w.RemoteProtocolError(f"ICReq with PDU format version {pdu.pfv}", w.Fes.UNSUPPORTED_PARAMETER, 8)
            writer.write(codec.encode(w.ICResp(hdgst=pdu.hdgst, ddgst=pdu.ddgst, maxdata=codec.max_data)))
        elif isinstance(pdu, w.CapsuleCmd):
            for out in session.handle(pdu):
                for part in codec.encode_parts(out):  # payloads go out without being joined to headers
                    writer.write(part)
        elif isinstance(pdu, w.TermReq):
            log.warning("host terminated queue %s: fes 0x%x", session.qid, pdu.fes)
            return False
        else:  # H2CData: we never send R2T, so no data may arrive
            raise w.RemoteProtocolError(f"unsolicited {type(pdu).__name__} (this target sends no R2T)",
                                        w.Fes.PDU_SEQUENCE_ERROR)
        return True


def serve(config: TargetConfig, *, ready: threading.Event | None = None,
          rescan: Callable[[], TargetConfig] | None = None, interval: float = 2.0) -> None:
    """Run the target until interrupted (the CLI's `pifarm target serve-userspace`). With
    `rescan`, the exports are rebuilt every `interval` seconds (newly published volumes appear)."""

    async def main() -> None:
        target = UserspaceTarget(config)
        await target.start()
        if ready is not None:
            ready.set()
        task = asyncio.get_running_loop().create_task(target.watch(rescan, interval)) if rescan else None
        try:
            await target.serve_forever()
        finally:
            if task:
                task.cancel()
            await target.stop()

    asyncio.run(main())


class ThreadedTarget:
    """The target on its own event loop thread, for blocking callers (tests, demo, bench).

        with ThreadedTarget(config) as t:
            port = t.port
    """

    def __init__(self, config: TargetConfig, rescan: Callable[[], TargetConfig] | None = None, interval: float = 2.0):
        self.config = config
        self.rescan, self.interval = rescan, interval
        self._watch: asyncio.Future | None = None
        self.loop = asyncio.new_event_loop()
        self.target = UserspaceTarget(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="nvme-userspace-target", daemon=True)
        self.host, self.port = "", 0

    def start(self) -> "ThreadedTarget":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.target.start(), self.loop)
        self.host, self.port = fut.result(timeout=10)
        if self.rescan is not None:
            self._watch = asyncio.run_coroutine_threadsafe(self.target.watch(self.rescan, self.interval), self.loop)
        return self

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._thread.is_alive():
            # bounds, not waits: a loaded machine (CI beside other jobs) can take seconds to close
            asyncio.run_coroutine_threadsafe(self.target.stop(), self.loop).result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=60)
        self.loop.close()

    def __enter__(self) -> "ThreadedTarget":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

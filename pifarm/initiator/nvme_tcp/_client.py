"""A blocking facade over `Controller` for synchronous callers (the cache's Source, the CLI).

The controller lives on a private event loop thread, so keep-alives keep flowing while the
caller is busy elsewhere. Transport failures (lost connection, timeout, malformed PDU, digest
mismatch) reconnect with exponential backoff a bounded number of times; an NVMe status (refused
host, write protected, ...) is an answer, not a failure, and is raised at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from pifarm.errors import ProtocolError, SourceError
from pifarm import nvmewire as w
from pifarm.initiator.nvme_tcp._controller import ConnectParams, Controller, NamespaceInfo

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmeTcpClient:
    def __init__(self, params: ConnectParams, retries: int = 3, backoff: float = 0.2, backoff_max: float = 5.0):
        self.params = params
        self.retries = retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nvme-tcp-initiator", daemon=True)
        self._thread.start()
        self._ctrl: Controller | None = None
        self.reconnects = 0

    def _run(self, coro: Awaitable[T]) -> T:
        # Every awaited step inside has its own deadline; this outer bound only guards against bugs.
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result(timeout=self.params.timeout * 8 + 30)

    def connect(self) -> "NvmeTcpClient":
        if self._ctrl is None:
            self._ctrl = self._run(Controller.connect(self.params))
        return self

    @property
    def controller(self) -> Controller:
        return self.connect()._ctrl  # type: ignore[return-value]

    def call(self, fn: Callable[[Controller], Awaitable[T]]) -> T:
        """Run `fn(controller)`; on a transport failure reconnect (with backoff) and run it again."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return self._run(fn(self.controller))
            except w.NvmeStatusError:
                raise
            except (SourceError, ProtocolError) as e:
                if attempt == self.retries:
                    raise
                log.warning("NVMe/TCP %s: %s; reconnecting in %.1f s (attempt %d of %d)",
                            self.params.where, e, delay, attempt + 1, self.retries)
                self._drop()
                time.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                self.reconnects += 1
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        ctrl, self._ctrl = self._ctrl, None
        if ctrl is not None:
            try:
                self._run(ctrl.abort())
            except Exception as e:  # closing a broken controller must not hide the original failure
                log.debug("abort after failure: %s", e)

    # -- conveniences ----------------------------------------------------------------------

    def namespaces(self) -> list[NamespaceInfo]:
        return self.call(lambda c: c.namespaces())

    def find_namespace(self, ns_uuid: uuid.UUID) -> NamespaceInfo:
        return self.call(lambda c: c.find_namespace(ns_uuid))

    def read(self, ns: NamespaceInfo, offset: int, length: int) -> bytes:
        return self.call(lambda c: c.read(ns, offset, length))

    def iter_read(self, ns: NamespaceInfo, offset: int, length: int, chunk: int = 4 << 20,
                  ahead: int = 2) -> Iterator[bytearray]:
        """Yield the range in `chunk`-sized pieces, keeping `ahead` chunks in flight so the link
        stays busy while the caller hashes and writes. A transport failure reconnects (bounded,
        with backoff) and resumes at the first chunk not yet delivered."""
        end = offset + length
        pos = offset  # next byte to yield
        delay, failures = self.backoff, 0
        while pos < end:
            inflight: deque[tuple[int, concurrent.futures.Future]] = deque()
            nxt = pos
            try:
                ctrl = self.controller
                while pos < end:
                    while nxt < end and len(inflight) < ahead:
                        n = min(chunk, end - nxt)
                        inflight.append((n, asyncio.run_coroutine_threadsafe(ctrl.read(ns, nxt, n), self._loop)))
                        nxt += n
                    n, fut = inflight.popleft()
                    data = fut.result(timeout=self.params.timeout * 8 + 30)
                    pos += n
                    yield data
            except w.NvmeStatusError:
                raise
            except (SourceError, ProtocolError) as e:
                failures += 1
                if failures > self.retries:
                    raise
                log.warning("NVMe/TCP %s: %s; reconnecting in %.1f s and resuming at byte %d",
                            self.params.where, e, delay, pos)
                self._drop()
                time.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                self.reconnects += 1
            finally:
                for _n, f in inflight:
                    f.cancel()

    def discovery_log(self) -> w.DiscoveryLog:
        return self.call(lambda c: c.discovery_log())

    def identify(self) -> w.IdentifyController:
        return self.call(lambda c: c.identify_controller())

    def close(self) -> None:
        ctrl, self._ctrl = self._ctrl, None
        try:
            if ctrl is not None:
                try:
                    self._run(ctrl.close())
                except Exception as e:
                    log.debug("close: %s", e)
        finally:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> "NvmeTcpClient":
        try:
            return self.connect()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

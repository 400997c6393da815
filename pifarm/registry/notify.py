"""In-process revision notification for long-poll waiters.

One `asyncio.Event` per revision generation: a change sets the current event and installs a
fresh one, so N waiters cost N suspended coroutines on one event and nothing polls. Registry
changes happen in worker threads, which hand the revision to the loop thread-safely.
"""

from __future__ import annotations

import asyncio
import gc
import time

#: from this many parked waiters on, a wake-up runs with the collector's view frozen (see _set)
FREEZE_FROM = 1000


class RevisionNotifier:
    def __init__(self, revision: int, loop: asyncio.AbstractEventLoop | None = None):
        self.revision = revision
        #: whatever the owner attaches to the current revision (the API: the response body)
        self.payload = None
        self.changed_at = time.monotonic()  # when the current revision arrived (fan-out metrics)
        self._loop = loop or asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.waiters = 0
        #: set when the server stops: parked waiters return at once instead of being cancelled
        self.closing = False

    def close(self) -> None:
        """Thread-safe: wake every waiter for good (the server is shutting down)."""
        self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self.closing = True
        self._event.set()

    def changed(self, revision: int, payload=None) -> None:
        """Thread-safe: called by the registry after each commit."""
        self._loop.call_soon_threadsafe(self._set, revision, payload)

    def _set(self, revision: int, payload=None) -> None:
        if revision <= self.revision and self.payload is not None:
            return
        self.revision, self.payload = revision, payload
        self.changed_at = time.monotonic()
        event, self._event = self._event, asyncio.Event()
        # Answering thousands of parked requests creates garbage fast, and each full collection
        # would rescan every parked request's objects, so the fan-out cost grew with its square.
        # Freeze what is alive now (out of the collector's sight) while the wake-ups run: set()
        # schedules every waiter, and the unfreeze queued after them runs once they all have.
        freeze = self.waiters >= FREEZE_FROM and not gc.get_freeze_count()
        if freeze:
            gc.freeze()
        event.set()
        if freeze:
            self._loop.call_soon(gc.unfreeze)

    async def wait_past(self, since: int, timeout: float) -> bool:
        """Wait until the revision exceeds `since`; False when `timeout` seconds pass first."""
        if self.revision > since:
            return True
        self.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while self.revision <= since and not self.closing:
                    await self._event.wait()
            return True
        except TimeoutError:
            return self.revision > since
        finally:
            self.waiters -= 1

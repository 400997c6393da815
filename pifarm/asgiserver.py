"""uvicorn's Server without its 10 Hz tick: an idle daemon's HTTP server sleeps (issue 19).

uvicorn wakes its main loop every 0.1 s to look for a shutdown request and, every tenth time,
to refresh the Date header; on an idle Pi that was the busiest thread left (10 wake-ups a second
in every daemon). Here the loop ticks once a second (the Date header's resolution) and a
shutdown request wakes it at once. A leaf: imports uvicorn only.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

TICK = 1.0


class QuietServer(uvicorn.Server):
    async def main_loop(self) -> None:
        self._exit_wake = asyncio.Event()
        self._exit_loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exit_wake.wait(), TICK)
            counter = (counter + 10) % 864000  # uvicorn refreshes the Date header when counter % 10 == 0
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self.wake()

    def wake(self) -> None:
        """Let the main loop see `should_exit` now (callable from any thread or a signal handler)."""
        loop = getattr(self, "_exit_loop", None)
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._exit_wake.set)

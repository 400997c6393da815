"""What every VM scenario needs: a bounded wait that ends the scenario with what it knows."""

from __future__ import annotations

import time
from typing import Callable


def until(cond: Callable[[], object], what: str, timeout: float, *, interval: float = 0.1,
          context: Callable[[], str] = lambda: ""):
    """Poll `cond()` until it is truthy and return it; past `timeout` end the scenario
    (SystemExit) naming `what` and whatever `context()` adds (facts so far, log tails)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}{context()}")

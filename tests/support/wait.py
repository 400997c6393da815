"""Bounded waits for tests and benches: poll until a condition holds, fail naming what never came.

Bounds are generous (a busy 2-core box) and only cap a wait: the loop ends as soon as the state
is reached, so nothing here measures or asserts a time.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable, TypeVar

import httpx

T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str = "the condition", timeout: float = 30.0,
             interval: float = 0.05) -> T:
    """Poll `cond()` until it returns something truthy and return that; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def eventually(cond: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """True once `cond()` is truthy, False when `timeout` passes first: `assert eventually(c), context`."""
    try:
        wait_for(cond, timeout=timeout, interval=interval)
        return True
    except AssertionError:
        return False


def wait_http(client: httpx.Client, path: str, predicate: Callable[[httpx.Response], bool], timeout: float = 30.0,
              what: str = "") -> httpx.Response:
    """GET `path` until predicate(response) holds and return that response; AssertionError after `timeout`."""
    last: list[httpx.Response] = []

    def ok() -> httpx.Response | None:
        r = client.get(path)
        last[:] = [r]
        return r if predicate(r) else None

    try:
        return wait_for(ok, what or path, timeout)
    except AssertionError:
        r = last[0] if last else None
        raise AssertionError(f"timed out waiting for {what or path}; last response "
                             f"{r.status_code if r else None}: {r.text[:500] if r else ''}") from None


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0,
                   host: str = "127.0.0.1") -> None:
    """Until a TCP connect to host:port succeeds; AssertionError (with its stderr) if `proc` exits first."""

    def up() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"process exited ({proc.returncode}) before listening on {host}:{port}: "
                                     f"{err.decode(errors='replace') if isinstance(err, bytes) else err}") from None
            return False

    wait_for(up, f"a listener on {host}:{port}", timeout)

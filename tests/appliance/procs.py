"""Real pifarm processes for the appliance tests: started by argv, ready when a URL answers,
stopped by their own PID (never by name)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.procs import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    argv: list[str]
    log: Path
    popen: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.popen, timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def start(args: list[str], log: Path, ready_url: str, *, verify: ssl.SSLContext | bool = True,
          env: dict[str, str] | None = None, timeout: float = 30.0, ready_any_status: bool = True) -> Proc:
    """`python -m pifarm ARGS` in the background; wait (bounded) until ready_url answers."""
    argv = [sys.executable, "-m", "pifarm", *args]
    out = open(log, "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    out.close()
    proc = Proc(argv, log, p)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{' '.join(args[:3])} exited early ({p.returncode}):\n{proc.output()}")
        try:
            r = httpx.get(ready_url, verify=verify, timeout=1.0)
            if ready_any_status or r.status_code < 500:
                return proc
        except (httpx.HTTPError, ssl.SSLError, OSError):
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{' '.join(args[:3])} not ready at {ready_url} after {timeout}s:\n{proc.output()}")


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pifarm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)

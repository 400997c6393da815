"""The real processes tests and benchmarks start: a free port, readiness, and stopping by PID.

    port = free_port()
    proc = start_pifarm(["aggregator", "run", ...], log, ready_url=f"http://127.0.0.1:{port}/health")
    proc.stop()
    run_cli(["registry", "--help"])          # `python -m pifarm ...` to completion
    pifarm("cache", "ls", "--json")           # the same, arguments spread

Processes are stopped by their own PID (never by name): SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the caller's server binds it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: a hung child never outlives its test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 30.0,
               output: Callable[[], str] = lambda: "", interval: float = 0.05) -> None:
    """Poll `ready()` (connection errors count as not yet) until true. RuntimeError with the
    process's output if it exits first, or, after stopping it, if `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early ({proc.returncode}):\n{output()}")
        try:
            if ready():
                return
        except (httpx.HTTPError, ssl.SSLError, OSError):
            pass
        time.sleep(interval)
    stop_process(proc, timeout=15)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{output()}")


@dataclass
class Proc:
    argv: list[str]
    log: Path
    popen: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.popen, timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def start_pifarm(args: list[str], log: Path, ready_url: str, *, verify: ssl.SSLContext | bool = True,
                 env: dict[str, str] | None = None, timeout: float = 30.0, ready_any_status: bool = True) -> Proc:
    """`python -m pifarm ARGS` in the background, output to `log`; ready when `ready_url` answers
    (any status, or below 500 with ready_any_status=False)."""
    argv = [sys.executable, "-m", "pifarm", *args]
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, start_new_session=True)
    proc = Proc(argv, log, p)

    def ready() -> bool:
        r = httpx.get(ready_url, verify=verify, timeout=1.0)
        return ready_any_status or r.status_code < 500

    wait_ready(p, ready, f"{' '.join(args[:3])} (at {ready_url})", timeout, proc.output, interval=0.1)
    return proc


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`python -m pifarm ARGS` to completion in the checkout, output captured as text."""
    return subprocess.run([sys.executable, "-m", "pifarm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, cwd=REPO)


def pifarm(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """run_cli with the arguments spread: pifarm("cache", "ls", "--json")."""
    return run_cli(list(args), env=env, timeout=timeout)

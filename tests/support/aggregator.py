"""A REAL aggregator for tests: `pifarm aggregator run` as a subprocess on a free loopback port.

    agg = start_aggregator(tmp_path / "agg")
    httpx.get(agg.url + "/health"); agg.token; agg.pubkey
    agg.stop(); agg.start()          # restart on the same port and data dir

Fixtures: test directories import `aggregator` (and `aggregator_factory`) from here in their
own conftest.py: `from tests.support.aggregator import aggregator, aggregator_factory  # noqa`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import free_port, stop_process, wait_ready

READY_TIMEOUT = 180.0  # a bound, not a wait: TCG guests and a loaded CI machine start slowly


@dataclass
class AggregatorProc:
    data_dir: Path
    port: int
    config: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    scheme: str = "http"
    _proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "api-token").read_text().strip()

    @property
    def pubkey(self) -> Path:
        return self.data_dir / "keys" / "signing.pub"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.aggregator.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = READY_TIMEOUT, verify: bool | str = False) -> "AggregatorProc":
        """Start (or restart) on the same port; return once /health answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        cmd = [sys.executable, "-m", "pifarm", "aggregator", "run", "--data-dir", str(self.data_dir),
               "--listen", f"127.0.0.1:{self.port}"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        cmd += list(self.extra_args)
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)
        wait_ready(self._proc, lambda: httpx.get(self.url + "/health", timeout=1, verify=verify).status_code == 200,
                   "aggregator", timeout, lambda: self.log()[-3000:])
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit code."""
        if self._proc is None:
            return None
        p, self._proc = self._proc, None
        return stop_process(p, timeout)

    def kill(self) -> None:
        """SIGKILL (crash tests)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None

    def client(self, token: bool = True):
        from pifarm.client.http import AggregatorClient

        return AggregatorClient(self.url, self.token if token else None)


def start_aggregator(data_dir: Path, *, config: Path | None = None, env: dict | None = None,
                     extra_args=(), port: int | None = None) -> AggregatorProc:
    """Run the real `pifarm aggregator run --data-dir D --listen 127.0.0.1:<free port>`."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    agg = AggregatorProc(data_dir, port or free_port(), config=config, env=dict(env or {}),
                         extra_args=tuple(extra_args))
    return agg.start()


@pytest.fixture
def aggregator_factory(tmp_path):
    """Call it to start aggregators (kwargs as `start_aggregator`); all are stopped afterwards."""
    started: list[AggregatorProc] = []

    def make(name: str = "agg", **kw) -> AggregatorProc:
        agg = start_aggregator(tmp_path / name, **kw)
        started.append(agg)
        return agg

    yield make
    for agg in started:
        agg.stop()


@pytest.fixture
def aggregator(aggregator_factory) -> AggregatorProc:
    """One real aggregator on the filesystem store, in this test's tmp_path."""
    return aggregator_factory()

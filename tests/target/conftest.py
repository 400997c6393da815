"""Fixtures of the target tests.

`cfs_root` is the configfs tree the contract tests run against:
- by default the in-memory fake, once per kernel profile ("fake-6.1": no DH-HMAC-CHAP,
  "fake-6.12": with it);
- with PIFARM_CONFIGFS_ROOT=/sys/kernel/config/nvmet (the VM tier sets it, running as root with
  nvmet + nvmet-tcp loaded), the real kernel instead, once.
"""

from __future__ import annotations

import os
import uuid

import pytest

from pifarm.target.configfs import RealBackend, Root
from pifarm.testing.fake_configfs import FakeConfigfs
from tests.support.procs import free_port

REAL_ROOT = os.environ.get("PIFARM_CONFIGFS_ROOT", "")


def _params():
    return ["real"] if REAL_ROOT else ["fake-6.1", "fake-6.12"]


@pytest.fixture(params=_params())
def cfs_root(request) -> Root:
    if request.param == "real":
        return Root(RealBackend(REAL_ROOT))
    return Root(FakeConfigfs(profile=request.param.split("-", 1)[1]))


@pytest.fixture
def is_real(cfs_root) -> bool:
    return isinstance(cfs_root.backend, RealBackend)


@pytest.fixture
def names():
    """Unique names for one test, so the contract tests never collide with anything on a real kernel."""
    tag = uuid.uuid4().hex[:8]

    class Names:
        subsys = f"nqn.2014-08.org.pifarm:test:{tag}"
        subsys2 = f"nqn.2014-08.org.pifarm:test:{tag}-b"
        host = f"nqn.2014-08.org.pifarm:test-host:{tag}"
        host2 = f"nqn.2014-08.org.pifarm:test-host:{tag}-b"
        port = 1000 + int(tag[:4], 16) % 50000
        port2 = port + 1

    return Names


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a real nvmet port binds it when enabled)."""
    return free_port()

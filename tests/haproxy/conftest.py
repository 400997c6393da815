import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require
from tests.haproxy.harness import haproxy_exe


@pytest.fixture
def haproxy_bin() -> str:
    exe = haproxy_exe()
    require(exe is not None, "haproxy missing (make system-deps installs it)")
    return exe


@pytest.fixture
def short_dir():
    """A short directory for unix sockets (sun_path holds 108 bytes; pytest's tmp paths are long)."""
    d = Path(tempfile.mkdtemp(prefix="pfhx", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)

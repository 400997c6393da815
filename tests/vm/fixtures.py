"""pytest side of the vm tier: one VM per kernel per pytest session, shared by every module.

Use it from any test directory by importing the fixture into that directory's conftest.py (or the
test module):

    from tests.vm.fixtures import KERNEL_PARAMS, vm_pool  # noqa: F401  (registers the fixture)

    @pytest.mark.vm
    @pytest.mark.parametrize("kernel", KERNEL_PARAMS)
    def test_something(vm_pool, kernel):
        r = vm_pool.run("nvme list", kernel=kernel)
        assert r.rc == 0, r.output

Each importing module gets its own fixture definition, so the VMs live on the pytest config
(`config.stash`), not in the fixture: they boot on first use and power off at session end.
Outside CI a missing host part skips with the reason; under CI=true that skip is a failure.
"""

from __future__ import annotations

from typing import Mapping

import pytest

from tests.conftest import require
from tests.vm.harness import KERNELS, Vm, VmResult, vm_available

KERNEL_PARAMS = [pytest.param(k, id=k) for k in KERNELS]
_POOL = pytest.StashKey["VmPool"]()


class VmPool:
    """Booted VMs by kernel, created lazily, all closed by `close()`."""

    def __init__(self) -> None:
        self._vms: dict[str, Vm] = {}

    def get(self, kernel: str = "bookworm") -> Vm:
        vm = self._vms.get(kernel)
        if vm is None:
            vm = self._vms[kernel] = Vm(kernel)
        vm.start()
        return vm

    def run(self, script: str, *, kernel: str = "bookworm", timeout: float = 300,
            env: Mapping[str, str] | None = None) -> VmResult:
        return self.get(kernel).run(script, timeout=timeout, env=env)

    def close(self) -> None:
        for vm in self._vms.values():
            vm.close()
        self._vms.clear()


@pytest.fixture(scope="session")
def vm_pool(request) -> VmPool:
    ok, why = vm_available()
    require(ok, f"vm tier: {why}")
    config = request.config
    pool = config.stash.get(_POOL, None)
    if pool is None:
        pool = config.stash[_POOL] = VmPool()
        config.add_cleanup(pool.close)
    return pool

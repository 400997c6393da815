"""Issue 5's contract tests (tests/target/test_contract.py) against the REAL nvmet configfs, on
both kernels: Debian 12's 6.1 (no DH-HMAC-CHAP) and Debian 13's 6.12 (with it). The same tests
run against the fake on the host; here they run as root inside the VM, under CI=true so that a
skip inside the guest is a failure too."""

from __future__ import annotations

import re

import pytest

from tests.vm.fixtures import KERNEL_PARAMS, vm_pool  # noqa: F401  (fixture)
from tests.vm.harness import PROJECT

pytestmark = pytest.mark.vm

CONTRACT = PROJECT / "tests" / "target" / "test_contract.py"


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_configfs_contract_holds_on_the_real_kernel(vm_pool, kernel):
    assert CONTRACT.exists(), f"{CONTRACT} is missing"
    r = vm_pool.run(
        'mkdir -p "$PIFARM_VM_SCRATCH/pytest-contract"\n'
        "python -m pytest tests/target/test_contract.py -q -p no:cacheprovider -p pytest_timeout "
        '--basetemp="$PIFARM_VM_SCRATCH/pytest-contract" -o console_output_style=classic\n',
        kernel=kernel, timeout=480,
        # plugin autoload (hypothesis, schemathesis...) costs ~100 s of imports over 9p under TCG
        env={"PIFARM_CONFIGFS_ROOT": "/sys/kernel/config/nvmet", "CI": "true", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert r.rc == 0, r.output[-8000:]
    summary = r.output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, summary
    assert not re.search(r"\d+ (failed|skipped|error)", summary), summary

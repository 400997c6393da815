"""Issue 5's real tier: `pifarm target ...` (the real CLI entry point) against the real kernel,
the kernel host (nvme-cli) connecting to it, on both kernels. The scenario runs in one guest
process (tests/vm/scenarios/target_apply.py) and reports facts; the tests assert on them."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import KERNEL_PARAMS, vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm
_FACTS: dict[str, dict] = {}


@pytest.fixture(params=KERNEL_PARAMS)
def facts(vm_pool, request):
    kernel = request.param
    if kernel not in _FACTS:  # one run per kernel, also when it fails (no reruns per test)
        r = vm_pool.run("python tests/vm/scenarios/target_apply.py", kernel=kernel, timeout=480)
        _FACTS[kernel] = json.loads(r.output.strip().splitlines()[-1]) if r.rc == 0 else {"failed": r.output[-6000:]}
    assert "failed" not in _FACTS[kernel], _FACTS[kernel].get("failed")
    return _FACTS[kernel]


def test_apply_exports_and_the_kernel_host_reads_a_verified_volume_by_uuid(facts):
    assert facts["apply_rc"] == 0 and facts["state"] == "live", facts["error"]
    assert facts["ns1_uuid"] == facts["expect_uuid1"]
    assert facts["ns1_blobs_verified"] == 2


def test_a_second_publish_adds_one_namespace_and_the_first_connection_stays(facts):
    assert facts["apply2_rc"] == 0
    assert facts["apply2_steps"] and all("/namespaces/2" in s for s in facts["apply2_steps"])
    assert facts["ns2_uuid"] == facts["expect_uuid2"] and facts["ns2_blobs_verified"] == 2
    assert facts["ctrl_same"] and facts["ctrl_state"] == "live"
    assert facts["ns1_still_verified"] == 2


def test_a_host_that_is_not_allowed_is_refused(facts):
    assert facts["stranger_offered"] == []
    assert "failed" in facts["stranger_connect"] and "allowed on the target" in facts["stranger_connect"]


def test_dhchap_is_enforced_where_the_kernel_has_it_and_refused_where_it_does_not(facts):
    if facts["kernel"].startswith("6.1."):
        assert facts["allow_dhchap_rc"] == 1 and "DH-HMAC-CHAP" in facts["allow_dhchap_msg"]
        assert facts["exported_without_auth"] is False
    else:
        assert facts["allow_dhchap_rc"] == 0 and facts["state"] == "live"  # connected with the key
        assert "failed" in facts["wrong_key"] or "did not finish" in facts["wrong_key"]


def test_save_clear_restore_gives_back_the_same_tree(facts):
    assert (facts["save_rc"], facts["clear_rc"], facts["restore_rc"]) == (0, 0, 0)
    assert facts["after_clear"] == []
    assert facts["same_tree"]

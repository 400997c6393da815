"""DH-HMAC-CHAP with the node's kernel attach, on Debian 13's 6.12 kernel (NVME_AUTH built)."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm
NQN = "nqn.2024-01.io.pifarm:vm-auth"


@pytest.fixture(scope="module")
def facts(vm_pool):
    r = vm_pool.run("python tests/vm/scenarios/dhchap_attach.py", kernel="trixie", timeout=420)
    assert r.rc == 0, r.output[-6000:]
    return json.loads(r.output.strip().splitlines()[-1])


def test_the_right_host_key_connects(facts):
    assert facts["right_key"]["state"] == "live" and NQN in facts["right_key"]["controllers"]


def test_bidirectional_authentication_connects(facts):
    assert facts["bidirectional"]["state"] == "live" and NQN in facts["bidirectional"]["controllers"]


@pytest.mark.parametrize("case", ["wrong_key", "no_key", "wrong_ctrl_key"])
def test_a_wrong_or_missing_key_is_refused_with_a_clear_reason(facts, case):
    f = facts[case]
    assert f["offered"] == [NQN], "discovery is not protected by DH-HMAC-CHAP: the subsystem is still offered"
    assert f["state"] != "live" and NQN not in f["controllers"]
    assert "nvme connect" in f["error"] or "did not finish" in f["error"], f["error"]
    if case != "wrong_key":  # see the scenario's note on the first target-side rejection after boot
        assert "DH-HMAC-CHAP" in f["error"], f["error"]
    assert "DHHC-1" not in f["error"], "secrets must not leak into messages"

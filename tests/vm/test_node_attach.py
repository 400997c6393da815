"""Issue 6 on the real kernel: nvmet target + nvme-tcp host in one VM, over loopback, driven by
the node's modules (identity, kernel attach, namespaces by UUID, nvme-kernel source) and the
real cache. The scenario runs in one guest process (tests/vm/scenarios/node_attach.py) and
reports facts; each test below asserts one behaviour of the issue on those facts."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def facts(vm_pool):
    r = vm_pool.run("python tests/vm/scenarios/node_attach.py", kernel="bookworm", timeout=420)
    assert r.rc == 0, r.output[-6000:]
    return json.loads(r.output.strip().splitlines()[-1])


def test_identity_files_are_written_once_and_used_for_connecting(facts):
    assert facts["identity_created"] == ["hostid", "hostnqn"]
    assert facts["identity_again_created"] == [] and facts["identity_stable"]
    assert facts["hostnqn_file"] == facts["hostnqn"]


def test_unreachable_and_nothing_offered_are_different_states(facts):
    assert facts["state_without_target"] == "unreachable"
    assert "Connection refused" in facts["error_without_target"]
    assert facts["state_not_allowed"] == "nothing-offered"
    assert not [d for d in facts["devices_not_allowed"] if d.startswith("nvme")]


def test_the_namespace_is_found_by_its_digest_uuid_through_a_kernel_uevent(facts):
    assert facts["state_allowed"] == "live"
    assert facts["ns1_uuid"] == facts["expect_uuid1"]
    assert facts["ns1_via_uevent"]


def test_blobs_are_read_from_the_block_device_and_verified_into_the_cache(facts):
    assert facts["v1_installed"] and all(v == ["nvme-kernel", True] for v in facts["v1_installed"].values())


def test_a_new_version_is_picked_up_without_reconnecting(facts):
    assert facts["ns2_via_uevent"]
    assert facts["controllers_after_v2"] == facts["controllers_first"]
    assert set(facts["ctrl_state_after_v2"].values()) == {"live"}
    assert facts["v2_installed"]["part0.bin"] == ["nvme-kernel", True]


def test_a_blob_altered_on_the_target_comes_from_the_next_source_and_the_volume_is_reported(facts):
    assert facts["v2_installed"]["part1.bin"] == ["http", True]
    victim = facts["victim_digest"]
    assert list(facts["corrupt"]) == [victim] and "m v2" in facts["corrupt"][victim]
    assert facts["status_file_corrupt"] == [victim]


def test_losing_the_port_falls_back_keeps_the_connection_and_recovers(facts):
    assert facts["state_port_down"] == "unreachable"
    assert facts["controllers_port_down"] == facts["controllers_first"], "discovery failure must not disconnect"
    assert set(facts["ctrl_state_port_down"].values()) <= {"connecting", "resetting"}
    assert all(v == ["http", True] for v in facts["v3_installed"].values())
    assert facts["state_port_back"] == "live"
    assert facts["controllers_port_back"] == facts["controllers_first"]
    assert facts["read_after_reconnect"]

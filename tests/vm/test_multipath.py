"""Issue 17 on the real kernel: one nvmet target, one pifarm volume, two TCP ports (standing for
two aggregators exporting under the same subsystem NQN and NSID/UUID/NGUID); the kernel host's
native multipath makes them one namespace head with two paths. The scenario runs in one guest
process (tests/vm/scenarios/multipath.py), in the bookworm VM the other vm tests already boot."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def facts(vm_pool):
    r = vm_pool.run("python tests/vm/scenarios/multipath.py", kernel="bookworm", timeout=480)
    assert r.rc == 0, r.output[-6000:]
    return json.loads(r.output.strip().splitlines()[-1])


def test_the_exporter_links_the_subsystem_on_both_ports_and_the_node_connects_to_each(facts):
    assert facts["multipath_param"] == "Y"  # Debian's default: native NVMe multipath
    assert facts["apply_rc"] == 0 and facts["ports_linked"] == ["1", "2"]
    assert facts["attach_states"] == ["live", "live"], facts["attach_errors"]
    c1, c2 = (list(c.values()) for c in facts["controllers"])
    assert len(c1) == len(c2) == 1 and c1 != c2  # two controllers, one per address
    # [target] cntlid_min/max: what lets two aggregators' controllers share one host subsystem
    assert facts["cntlid_range"] == ["1000", "1999"]
    assert len(facts["cntlids"]) == 2 and all(1000 <= c <= 1999 for c in facts["cntlids"]), facts["cntlids"]


def test_one_head_with_two_paths_and_the_node_finds_the_head(facts):
    head = facts["head"]
    assert facts["matching"] == [head] and facts["head_dev_exists"]
    assert len(facts["hidden_paths"]) == 2 and head not in facts["hidden_paths"]
    by_addr = sorted(p["traddr"] for p in facts["paths_before"].values())
    assert by_addr == ["127.0.0.1", "127.0.0.2"]
    assert {p["state"] for p in facts["paths_before"].values()} == {"live"}
    listed = facts["list_subsys"]  # nvme-cli's view of the same subsystem: two paths
    assert len(listed) == 2 and listed[0].startswith("traddr=127.0.0.1,") and listed[1].startswith("traddr=127.0.0.2,"), listed


def test_the_host_sees_the_nsid_uuid_and_nguid_the_registry_assigned(facts):
    assert facts["registry_nsid"] == 3  # v1 and v2 retired: not what a fresh local table would pick
    assert facts["host_nsid"] == facts["registry_nsid"]
    assert facts["host_uuid"] == facts["expect_uuid"] and facts["host_nguid"] == facts["expect_nguid"]


def test_a_read_through_the_head_verifies_and_uses_both_paths(facts):
    assert facts["iopolicy"] == "round-robin"
    assert facts["verified_both"] >= 2
    assert all(d > 0 for d in facts["read_both"].values()) and len(facts["read_both"]) == 2, facts["read_both"]


def test_with_one_port_removed_reads_still_verify_through_the_other_path(facts):
    assert facts["apply_one_rc"] == 0 and facts["cntlid_range_after"] == ["2000", "2999"]
    steps = facts["apply_one_steps"]
    assert [s.split()[1] for s in steps if "ports/" in s] == ["unlink", "rmdir"]
    assert all("ports/2" in s or "attr_cntlid_" in s for s in steps), steps
    removed = facts["removed_ctrl"]
    after = facts["paths_after"]
    assert {p["ctrl"]: p["state"] for p in after.values()}[removed] != "live"
    assert facts["head_after"] == [facts["head"]]
    assert facts["verified_one"] == facts["verified_both"]
    for name, p in after.items():
        read = facts["read_one"][name]
        assert (read > 0) if p["ctrl"] != removed else (read == 0), facts["read_one"]

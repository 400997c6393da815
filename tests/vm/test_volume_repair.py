"""Issue 11 with the real kernel: an allowed host writes garbage into an exported namespace; no
node installs a bad byte, the node reports the volume, the aggregator rebuilds it in place and
the NVMe path serves again (Debian 12's 6.1 target, which opens volumes read-write)."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1500)]  # two node runs under TCG


@pytest.fixture(scope="module")
def facts(vm_pool):
    r = vm_pool.run("python tests/vm/scenarios/volume_repair.py", kernel="bookworm", timeout=900)
    assert r.rc == 0, r.output[-6000:]
    return json.loads(r.output.strip().splitlines()[-1])


def test_the_volume_is_served_over_nvme_at_first(facts):
    assert facts["first_source"] == "nvme-kernel"


def test_a_host_write_damages_the_exported_file(facts):
    assert facts["damaged_after_write"]


def test_no_node_installs_a_bad_byte_and_the_corrupt_volume_is_noticed(facts):
    assert facts["second_source"] == "http" and facts["second_corrupt_seen"] and facts["second_cache_ok"]


def test_the_aggregator_rebuilds_it_and_nvme_serves_again(facts):
    assert facts["rebuilt"] and facts["changed_by_rebuild"]
    assert facts["health"]["rebuilt"] >= 1
    assert facts["nvme_volume_verifies"]

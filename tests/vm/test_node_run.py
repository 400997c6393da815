"""Issue 6 with the real daemons: `pifarm node run` (nvme-kernel source first, HTTP second)
against `pifarm aggregator run` exporting through the kernel target, in one VM."""

from __future__ import annotations

import json

import pytest

from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def facts(vm_pool):
    r = vm_pool.run("python tests/vm/scenarios/node_run.py", kernel="bookworm", timeout=600)
    assert r.rc == 0, r.output[-6000:]
    return json.loads(r.output.strip().splitlines()[-1])


def test_node_identity_is_created_once_and_is_what_the_node_connects_with(facts):
    assert facts["identity_created"] == ["hostid", "hostnqn"]
    assert facts["hostnqn_file"] == facts["hostnqn"]


def test_node_run_installs_the_published_version_from_the_block_device(facts):
    assert facts["v1_source"] == "nvme-kernel"
    assert facts["nvme_path_v1"] == "live" and facts["nvme_volumes_v1"] == [1]


def test_the_next_version_comes_over_the_same_connection(facts):
    assert facts["v2_source"] == "nvme-kernel"
    assert facts["controllers_v2"] == facts["controllers_v1"] and facts["nvme_path_v2"] == "live"
    assert facts["node_alive"]

"""The configfs test double outside its contract (tests/target/test_contract.py holds that): its
`fake:FILE` persistence, and how `[target] configfs_root` reaches it only through the appliance."""

from __future__ import annotations

import errno
import json

import pytest

from pifarm.appliance.target_root import kernel_target, open_root
from pifarm.errors import UsageError
from pifarm.target.configfs import Mode, RealBackend, Root
from pifarm.target.settings import TargetSettings
from pifarm.testing.fake_configfs import FakeConfigfs

NQN = "nqn.2014-08.org.pifarm:test:fake"


def test_a_fake_root_keeps_its_tree_in_the_file_across_opens(tmp_path):
    state = tmp_path / "cfs.json"
    root = open_root(f"fake:{state}")
    assert isinstance(root.backend, FakeConfigfs) and root.backend.label == f"fake:{state}"
    root.subsystem(NQN, Mode.CREATE)
    assert NQN in json.loads(state.read_text())["subsystems"]
    again = open_root(f"fake:{state}")
    assert [s.nqn for s in again.subsystems] == [NQN]
    # still the kernel's rules after a reload: the same name twice is EEXIST
    with pytest.raises(OSError) as e:
        again.backend.mkdir(f"subsystems/{NQN}")
    assert e.value.errno == errno.EEXIST


def test_a_path_root_is_the_real_backend(tmp_path):
    (tmp_path / "subsystems").mkdir()
    root = open_root(tmp_path)
    assert isinstance(root.backend, RealBackend) and root.backend.label == str(tmp_path)


def test_the_target_alone_refuses_a_fake_root_with_where_to_open_it(tmp_path):
    with pytest.raises(UsageError, match="fake tree.*open_root"):
        Root.at(f"fake:{tmp_path / 'cfs.json'}")


def test_the_wired_target_sees_a_fake_root_as_present_and_a_missing_tree_as_absent(tmp_path):
    fake = kernel_target(TargetSettings(configfs_root=f"fake:{tmp_path / 'cfs.json'}"), tmp_path / "a")
    assert fake.configfs_present()
    assert fake.status()["configfs_root"] == f"fake:{tmp_path / 'cfs.json'}"
    missing = kernel_target(TargetSettings(configfs_root=str(tmp_path / "no-nvmet")), tmp_path / "b")
    assert not missing.configfs_present()

"""Issue 11, finding 2: a host NQN is a claim anyone can make, so enrollment hands each host a
DH-HMAC-CHAP secret wherever the kernel target has DH-HMAC-CHAP, and where it does not,
enrollment is refused until the operator opts out (`[enroll] dhchap = false`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pifarm.appliance.aggregator_enroll import dhchap_for_hosts
from pifarm.errors import Conflict
from pifarm.pki.settings import EnrollSettings
from pifarm.target.settings import TargetSettings
from pifarm.testing.fake_configfs import FakeConfigfs


def ctx(tmp_path, profile: str | None, dhchap: bool | None = None):
    root = "/nonexistent/nvmet"
    if profile is not None:
        state = tmp_path / f"configfs-{profile}.json"
        FakeConfigfs.persistent(state, profile)._save()
        root = f"fake:{state}"
    config = SimpleNamespace(enroll=EnrollSettings(dhchap=dhchap), target=TargetSettings(configfs_root=root))
    return SimpleNamespace(config=config, data_dir=tmp_path / "agg")


def test_on_by_default_where_the_kernel_has_it(tmp_path):
    c = ctx(tmp_path, "6.12")
    assert dhchap_for_hosts(c) is True
    assert FakeConfigfs.persistent(tmp_path / "configfs-6.12.json").hosts == {}  # the probe host is gone


def test_refused_where_the_kernel_lacks_it_unless_the_operator_opts_out(tmp_path):
    with pytest.raises(Conflict, match="dhchap = false"):
        dhchap_for_hosts(ctx(tmp_path, "6.1"))
    assert dhchap_for_hosts(ctx(tmp_path, "6.1", dhchap=False)) is False


def test_no_kernel_target_no_secret_and_an_explicit_setting_wins(tmp_path):
    assert dhchap_for_hosts(ctx(tmp_path, None)) is False
    assert dhchap_for_hosts(ctx(tmp_path, "6.12", dhchap=False)) is False


def test_the_default_is_auto():
    assert EnrollSettings().dhchap is None


def test_doctor_says_when_hosts_are_known_by_nqn_alone(tmp_path):
    from pifarm.appliance.doctor import Env, check_enrollment

    data = tmp_path / "agg"
    data.mkdir()
    (data / "enroll-secret").write_text("old\n")
    env = Env(role="aggregator", config={"enroll": {"dhchap": False}, "registry": {"data_dir": str(data)}},
              sys_root=tmp_path / "sys")
    res = {r.check: r for r in check_enrollment(env)}
    assert res["host authentication"].status == "warn" and "claims an enrolled NQN" in res["host authentication"].detail
    assert res["enrollment secret"].status == "warn" and "enroll token create" in res["enrollment secret"].fix
    on = Env(role="aggregator", config={"enroll": {"dhchap": True}, "registry": {"data_dir": str(tmp_path / "x")}})
    assert [r.status for r in check_enrollment(on)] == ["pass"]

"""nvmetcli's JSON format both ways, and refusals of malformed documents."""

from __future__ import annotations

import copy
import json
import os
import stat

import pytest

from pifarm.errors import UsageError
from pifarm.target.configfs import Root
from pifarm.target.nvmetcli_json import dump, load_file, restore, save_file, to_spec
from pifarm.testing.fake_configfs import FakeConfigfs

# the shape of nvmetcli's own tcp.json example (nvmetcli 7a94d92), with our backing file
NVMETCLI_TCP = {
    "hosts": [{"nqn": "nqn.2014-08.org.pifarm:node:n1"}],
    "ports": [{
        "addr": {"adrfam": "ipv4", "traddr": "127.0.0.1", "treq": "not specified", "trsvcid": "4420", "trtype": "tcp"},
        "ana_groups": [{"ana": {"state": "optimized"}, "grpid": 1}],
        "param": {"inline_data_size": "16384", "pi_enable": "0"},
        "portid": 1, "referrals": [], "subsystems": ["nvmet-always"]}],
    "subsystems": [{
        "allowed_hosts": ["nqn.2014-08.org.pifarm:node:n1"],
        "attr": {"allow_any_host": "0", "cntlid_max": "65519", "cntlid_min": "1", "model": "Linux",
                 "pi_enable": "0", "serial": "123456789abcdef", "version": "1.3"},
        "namespaces": [{"ana_grpid": 1, "device": {"nguid": "00000000-0000-0000-0000-000000000000", "path": "PATH",
                                                   "uuid": "d592cdf3-5d1c-44e0-8412-3fcf7d99df27"},
                        "enable": 1, "nsid": 1}],
        "nqn": "nvmet-always"}],
}


@pytest.fixture
def doc(tmp_path):
    d = copy.deepcopy(NVMETCLI_TCP)
    p = tmp_path / "disk.img"
    p.write_bytes(b"\0" * 65536)
    d["subsystems"][0]["namespaces"][0]["device"]["path"] = str(p)
    return d


def test_nvmetcli_file_restores_and_dumps_back(doc):
    root = Root(FakeConfigfs("6.1"))
    restore(root, doc)
    ns = root.subsystem("nvmet-always").namespace(1)
    assert ns.enabled and ns.get("device_uuid") == "d592cdf3-5d1c-44e0-8412-3fcf7d99df27"
    assert root.subsystem("nvmet-always").get("attr_serial") == "123456789abcdef"
    assert root.port(1).subsystems == ["nvmet-always"]
    out = dump(root)
    assert set(out) == {"hosts", "ports", "subsystems"}
    s = out["subsystems"][0]
    assert set(s) >= {"nqn", "attr", "allowed_hosts", "namespaces"}
    assert s["namespaces"][0]["device"]["path"] == doc["subsystems"][0]["namespaces"][0]["device"]["path"]
    assert s["namespaces"][0]["enable"] == 1 and s["namespaces"][0]["nsid"] == 1
    assert out["ports"][0]["addr"]["traddr"] == "127.0.0.1" and out["ports"][0]["portid"] == 1
    assert restore(root, out) == 0  # our own dump restores to no change


def test_save_is_atomic_and_private(tmp_path, doc):
    p = save_file(tmp_path / "config.json", doc)
    assert json.loads(p.read_text()) == doc
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".part")] == []
    assert load_file(p) == doc


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.__setitem__("ports", [{"addr": {}}]), "has no 'portid'"),
    (lambda d: d["subsystems"][0]["namespaces"][0].__setitem__("nsid", "one"), "must be a int"),
    (lambda d: d["subsystems"][0].__setitem__("allowed_hosts", ["nqn.2014-08.org.x:unknown"]), "not under hosts"),
    (lambda d: d["ports"][0].__setitem__("subsystems", ["ghost"]), "not under subsystems"),
    (lambda d: d["subsystems"][0]["attr"].__setitem__("serial", {"x": 1}), "string or integer"),
])
def test_malformed_documents_are_refused_before_touching_configfs(doc, mutate, msg):
    mutate(doc)
    root = Root(FakeConfigfs("6.12"))
    with pytest.raises(UsageError, match=msg):
        restore(root, doc)
    assert root.backend.writes == 0


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="not JSON"):
        load_file(tmp_path / "bad.json")
    with pytest.raises(UsageError):
        to_spec([])

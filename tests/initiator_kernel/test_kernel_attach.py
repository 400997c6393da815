"""Host-side parts of the kernel attach: nvme-cli output, sysfs controller reading, bounds.
The attach states themselves (live / nothing-offered / unreachable) are proven against the real
kernel in tests/vm/test_node_attach.py."""

from __future__ import annotations

import sys

import pytest

from pifarm.errors import ConfigError, SourceError, SourceTimeout
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.kernel_attach import (
    AttachSettings, KernelAttacher, parse_address, parse_discovery, run_bounded,
)

# `nvme discover -o json` from nvme-cli 2.3 against Linux 6.1 nvmet (captured in the VM tier)
DISCOVERY = """{
  "genctr":2,
  "records":[
    {"trtype":"tcp","adrfam":"ipv4","subtype":"current discovery subsystem",
     "treq":"not specified, sq flow control disable supported","portid":1,"trsvcid":"4420",
     "subnqn":"nqn.2014-08.org.nvmexpress.discovery","traddr":"127.0.0.1","eflags":"none","sectype":"none"},
    {"trtype":"tcp","adrfam":"ipv4","subtype":"nvme subsystem",
     "treq":"not specified, sq flow control disable supported","portid":1,"trsvcid":"4420",
     "subnqn":"nqn.2024-01.io.pifarm:test","traddr":"127.0.0.1","eflags":"none","sectype":"none"}
  ]
}"""


def test_discovery_output_yields_only_nvm_subsystems():
    assert parse_discovery(DISCOVERY) == ["nqn.2024-01.io.pifarm:test"]
    assert parse_discovery('{"genctr":2,"records":[]}') == []
    with pytest.raises(SourceError, match="not JSON"):
        parse_discovery("{garbage")


@pytest.mark.parametrize("text,want", [
    ("10.0.0.1:4420", ("10.0.0.1", 4420)),
    ("10.0.0.1", ("10.0.0.1", 4420)),
    ("[fe80::1]:4421", ("fe80::1", 4421)),
    ("fe80::1", ("fe80::1", 4420)),
])
def test_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("kw,needle", [
    ({"address": ""}, "address"),
    ({"address": "a", "port": 0}, "out of range"),
    ({"address": "a", "dhchap_secret": "secret"}, "not a DHHC-1 secret"),
    ({"address": "a", "reconnect_delay": 0}, "reconnect_delay"),
])
def test_bad_settings_are_config_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        AttachSettings(**kw)


def _ctrl(root, name, nqn, address="traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1", transport="tcp",
          cntrltype=None, state="live"):
    d = root / "class" / "nvme" / name
    d.mkdir(parents=True)
    (d / "subsysnqn").write_text(nqn + "\n")
    (d / "address").write_text(address + "\n")
    (d / "transport").write_text(transport + "\n")
    (d / "state").write_text(state + "\n")
    if cntrltype:
        (d / "cntrltype").write_text(cntrltype + "\n")


def test_controllers_are_ours_only_for_this_address_and_not_discovery(tmp_path):
    sysfs = tmp_path / "sys"
    _ctrl(sysfs, "nvme0", "nqn.2024-01.io.pifarm:a")
    _ctrl(sysfs, "nvme1", "nqn.2014-08.org.nvmexpress.discovery")  # a discover in progress
    _ctrl(sysfs, "nvme2", "nqn.2024-01.io.pifarm:uniq-disc", cntrltype="discovery")
    _ctrl(sysfs, "nvme3", "nqn.2024-01.io.pifarm:b", address="traddr=10.9.9.9,trsvcid=4420")
    _ctrl(sysfs, "nvme4", "(efault)")  # being created: no subsystem yet
    _ctrl(sysfs, "nvme5", "nqn.2024-01.io.pifarm:pci", transport="pcie", address="0000:01:00.0")
    _ctrl(sysfs, "nvme6", "nqn.2024-01.io.pifarm:c", state="connecting")
    a = KernelAttacher(AttachSettings("127.0.0.1", 4420), ensure_identity(tmp_path / "id"), sys_root=sysfs)
    assert a.controllers() == {"nqn.2024-01.io.pifarm:a": "nvme0", "nqn.2024-01.io.pifarm:c": "nvme6"}
    assert a.controller_state("nvme6") == "connecting" and a.controller_state("nvme42") == "gone"


def test_commands_are_bounded_and_a_missing_nvme_cli_is_a_clear_error(tmp_path):
    with pytest.raises(SourceTimeout, match="did not finish within 0.5s"):
        run_bounded([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    a = KernelAttacher(AttachSettings("127.0.0.1", 4420, nvme=str(tmp_path / "no-nvme")), ensure_identity(tmp_path / "id"),
                       sys_root=tmp_path)
    res = a.attach_once()  # discovery cannot run: unreachable, with the reason, no exception
    assert res.state == "unreachable" and "install nvme-cli" in res.error

"""`pifarm target ...` and `pifarm volume ...` end to end: a real registry, the fake configfs
persisted in a file (`[target] configfs_root = "fake:FILE"`), the real CLI entry point."""

from __future__ import annotations

import json
import os

import pytest

from pifarm.appliance.cli import main
from pifarm.registry.service import Registry

HOST = "nqn.2014-08.org.pifarm:node:n1"


@pytest.fixture
def agg(tmp_path):
    data = tmp_path / "agg"
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(20_000))
    with Registry.open(data) as reg:
        reg.publish(src, "mobilenet", format="raw")
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f'[registry]\ndata_dir = "{data}"\n\n[target]\nconfigfs_root = "fake:{tmp_path / "cfs.json"}"\n'
                   f'addresses = ["127.0.0.1"]\nsubsystem_nqn = "nqn.2014-08.org.pifarm:aggregator:t"\n')
    return cfg, data, src


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_apply_status_flow(agg, capsys):
    cfg, data, src = agg
    rc, out, _ = run(capsys, "target", "plan", "--config", str(cfg))
    assert rc == 0 and "mkdir  subsystems/nqn.2014-08.org.pifarm:aggregator:t" in out
    assert not (data / "volumes").exists()  # a plan builds nothing
    rc, out, _ = run(capsys, "target", "apply", "--config", str(cfg))
    assert rc == 0 and "volume: built mobilenet-v1.vol" in out and "[1/" in out
    rc, out, _ = run(capsys, "target", "apply", "--config", str(cfg))
    assert rc == 0 and "nothing to do" in out
    with Registry.open(data) as reg:  # a second publish adds exactly one namespace
        src.write_bytes(os.urandom(20_000))
        reg.publish(src, "mobilenet", format="raw")
    rc, out, _ = run(capsys, "target", "plan", "--config", str(cfg))
    assert rc == 0 and all("/namespaces/2" in line for line in out.strip().splitlines())
    run(capsys, "target", "apply", "--config", str(cfg))
    rc, out, _ = run(capsys, "target", "status", "--json", "--config", str(cfg))
    st = json.loads(out)
    assert [n["nsid"] for n in st["namespaces"]] == [1, 2] and all(n["enabled"] for n in st["namespaces"])
    assert st["allow_any_host"] == "0" and st["ports"][0]["linked"] and len(st["volumes"]) == 2
    rc, out, _ = run(capsys, "target", "status", "--config", str(cfg))
    assert rc == 0 and "namespaces" in out


def test_hosts_dhchap_save_clear_restore(agg, capsys, tmp_path):
    cfg, data, _ = agg
    rc, out, _ = run(capsys, "target", "allow-host", HOST, "--dhchap", "--bidirectional", "--config", str(cfg))
    assert rc == 0 and "DHHC-1:01:" in out and "controller secret" in out
    assert "<secret>" in out  # the apply log never prints a key
    hosts = json.loads((data / "target" / "hosts.json").read_text())
    assert hosts[HOST]["dhchap_key"].startswith("DHHC-1:01:") and oct((data / "target" / "hosts.json").stat().st_mode)[-3:] == "600"
    rc, out, _ = run(capsys, "target", "status", "--json", "--config", str(cfg))
    assert json.loads(out)["allowed_hosts"] == [HOST]
    saved = tmp_path / "nvmet.json"
    assert run(capsys, "target", "save", str(saved), "--config", str(cfg))[0] == 0
    doc = json.loads(saved.read_text())
    assert doc["hosts"][0]["dhchap"]["key"] == hosts[HOST]["dhchap_key"]
    rc, out, _ = run(capsys, "target", "clear", "--dry-run", "--config", str(cfg))
    assert rc == 0 and "rmdir  ports/1" in out
    assert run(capsys, "target", "clear", "--config", str(cfg))[0] == 0
    rc, out, _ = run(capsys, "target", "status", "--json", "--config", str(cfg))
    assert json.loads(out)["present"] is False
    assert run(capsys, "target", "restore", str(saved), "--config", str(cfg))[0] == 0
    assert run(capsys, "target", "save", str(tmp_path / "again.json"), "--config", str(cfg))[0] == 0
    assert json.loads((tmp_path / "again.json").read_text()) == doc
    rc, out, _ = run(capsys, "target", "deny-host", HOST, "--config", str(cfg))
    assert rc == 0 and f"rmdir  hosts/{HOST}" in out


def test_volume_build_and_inspect(agg, capsys):
    cfg, data, _ = agg
    rc, out, _ = run(capsys, "volume", "build", "mobilenet", "1", "--config", str(cfg))
    assert rc == 0 and "mobilenet-v1.vol" in out
    vol = data / "volumes" / "mobilenet-v1.vol"
    rc, out, _ = run(capsys, "volume", "inspect", str(vol), "--json", "--trusted-key", str(data / "keys" / "signing.pub"))
    info = json.loads(out)
    assert rc == 0 and info["signature"] == "verified" and info["blobs_verified"] == 1
    assert info["entries"][0]["offset"] % 4096 == 0
    b = bytearray(vol.read_bytes())
    b[info["entries"][0]["offset"] + 5] ^= 1
    vol.write_bytes(bytes(b))
    rc, _, err = run(capsys, "volume", "inspect", str(vol))
    assert rc == 1 and "corrupt or tampered" in err and len(err.strip().splitlines()) == 1


def test_errors_are_one_line_with_exit_codes(agg, capsys, tmp_path):
    cfg, data, _ = agg
    rc, _, err = run(capsys, "target", "allow-host", "not-an-nqn", "--config", str(cfg))
    assert rc == 2 and "invalid NQN" in err
    rc, _, err = run(capsys, "target", "deny-host", HOST, "--no-apply", "--config", str(cfg))
    assert rc == 1 and "not in the allow list" in err
    rc, _, err = run(capsys, "target", "plan", "--data-dir", str(tmp_path / "empty"))
    assert rc == 2 and "no registry" in err
    rc, _, err = run(capsys, "volume", "build", "mobilenet", "9", "--config", str(cfg))
    assert rc == 1 and "not a served version" in err
    rc, _, err = run(capsys, "volume", "inspect", str(tmp_path / "nope.vol"))
    assert rc == 1 and "does not exist" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[target]\nbuffered_io = "sometimes"\n')
    rc, _, err = run(capsys, "target", "status", "--config", str(bad))
    assert rc == 2 and "buffered_io" in err
    rc, _, err = run(capsys, "target", "restore", str(tmp_path / "nope.json"), "--config", str(cfg))
    assert rc == 2 and "does not exist" in err
    # a real configfs root that is not there: clear message, no traceback
    real = tmp_path / "real.toml"
    real.write_text(f'[registry]\ndata_dir = "{data}"\n[target]\nconfigfs_root = "{tmp_path / "no-nvmet"}"\n')
    rc, _, err = run(capsys, "target", "status", "--config", str(real))
    assert rc == 1 and "modprobe nvmet" in err

"""`pifarm setup aggregator|node` into a staging root: what it writes, that a second run changes
nothing, that an edited config survives, that --dry-run writes nothing, and that the installed
units are enabled and verify."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from pifarm.appliance.config import load_aggregator_config
from tests.support.procs import run_cli
from tests.conftest import require

CONF = "etc/pifarm/aggregator.toml"
DATA = "var/lib/pifarm/aggregator"


def _setup_agg(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["setup", "aggregator", "--root", str(root), "--no-start", "--name", "localhost",
                    "--ip", "127.0.0.1", *extra])


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file() and not rel.endswith(("registry.db", "registry.db-wal", "registry.db-shm", "registry.lock")):
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage") / "root"
    r = _setup_agg(root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, r


def test_aggregator_writes_everything_it_lists(staged):
    root, r = staged
    data = root / DATA
    for rel in (CONF, "etc/sysctl.d/90-pifarm.conf", "etc/modules-load.d/pifarm-aggregator.conf",
                "etc/systemd/system/pifarm-aggregator.service", "etc/systemd/system/pifarm-target.service"):
        assert (root / rel).is_file(), rel
    for secret in ("keys/signing.key", "api-token", "pki/ca.key", "pki/server.key"):
        p = data / secret
        assert p.is_file() and stat.S_IMODE(p.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert "nvmet-tcp" in (root / "etc/modules-load.d/pifarm-aggregator.conf").read_text()
    # no fleet-wide enrollment secret (issue 11): the printed lines make a one-time token, pin the CA
    assert not (data / "enroll-secret").exists()
    assert "pifarm enroll token create --ttl 1h" in r.stdout and "--enroll-file token --ca-hash sha256:" in r.stdout


def test_aggregator_config_is_loadable_by_the_daemon_and_points_at_the_pki(staged):
    root, _ = staged
    cfg = load_aggregator_config(root / CONF, environ={})
    api = cfg.api
    assert api.tls_cert.endswith("/pki/server.crt") and api.tls_client_ca.endswith("/pki/ca-bundle.pem")
    assert cfg.registry.data_dir == "/var/lib/pifarm/aggregator"  # system paths, not staging ones


def test_units_are_enabled_offline_and_start_this_pifarm(staged):
    root, _ = staged
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("pifarm-aggregator.service", "pifarm-target.service"):
        link = wants / unit
        assert link.is_symlink() and os.readlink(link) == f"/etc/systemd/system/{unit}"
        text = (root / "etc/systemd/system" / unit).read_text()
        assert "/usr/local/bin/pifarm" not in text
        exe = text.split("ExecStart=", 1)[1].split()[0]
        assert os.access(exe, os.X_OK)


def test_installed_units_verify(staged):
    exe = shutil.which("systemd-analyze")
    require(exe is not None, "systemd-analyze missing (make system-deps)")
    root, _ = staged
    units = [str(root / "etc/systemd/system" / u) for u in ("pifarm-aggregator.service", "pifarm-target.service")]
    r = subprocess.run([exe, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_second_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    assert _setup_agg(root).returncode == 0
    before = _tree(root)
    r = _setup_agg(root)
    assert r.returncode == 0, r.stderr
    assert _tree(root) == before
    assert "created" not in r.stdout.replace("created CA", "")


def test_edited_config_is_kept_unless_forced(tmp_path):
    root = tmp_path / "root"
    assert _setup_agg(root).returncode == 0
    conf = root / CONF
    edited = conf.read_text().replace('listen = "0.0.0.0:8470"', 'listen = "0.0.0.0:9000"')
    conf.write_text(edited)
    secret = (root / DATA / "api-token").read_text()
    r = _setup_agg(root)
    assert r.returncode == 0 and "kept (edited" in r.stdout
    assert conf.read_text() == edited
    r = _setup_agg(root, "--force")
    assert r.returncode == 0 and "overwritten" in r.stdout
    assert 'listen = "0.0.0.0:8470"' in conf.read_text()
    assert (conf.parent / "aggregator.toml.bak").read_text() == edited
    assert (root / DATA / "api-token").read_text() == secret  # --force never regenerates secrets


def test_dry_run_lists_every_step_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    r = _setup_agg(root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not root.exists()
    for what in (CONF, "api-token", "pki", "pifarm-aggregator.service", "systemctl --root="):
        assert what in r.stdout, what
    # every line is a step or, indented under a file step, the contents it would write (issue 20)
    assert all(line.startswith(("would ", "       | ")) for line in r.stdout.strip().splitlines())
    assert "       | [api]" in r.stdout and "       | ExecStart=" in r.stdout, r.stdout


def test_dry_run_of_node_contacts_nobody_and_writes_nothing(tmp_path):
    root = tmp_path / "node"
    r = run_cli(["setup", "node", "--root", str(root), "--aggregator", "https://127.0.0.1:1", "--trust-on-first-use",
                 "--dry-run"], env={"PIFARM_ENROLL_TOKEN": "x"})
    assert r.returncode == 0, r.stderr
    assert not root.exists()
    assert "https://127.0.0.1:2" in r.stdout  # the enrollment listener: API port + 1
    for what in ("etc/nvme/hostnqn", "node.toml", "pifarm-inference.service"):
        assert what in r.stdout, what


@pytest.mark.parametrize("args, message", [
    (["--aggregator", "ftp://x", "--trust-on-first-use"], "must be a URL"),
    (["--aggregator", "https://a:1", "--ca-hash", "md5:00"], "sha256"),
    (["--aggregator", "https://a:1"], "--ca-hash sha256:<hex> is required"),
    (["--aggregator", "https://a:1", "--trust-on-first-use", "--enroll-file", "-"], "expected one line"),
    (["--aggregator", "https://a:1", "--trust-on-first-use", "--enroll-file", "/nonexistent"], "--enroll-file"),
])
def test_node_bad_input_is_one_clear_line(tmp_path, args, message):
    # (--ca-hash, or an explicit --trust-on-first-use, is required: issue 11 finding 5)
    r = run_cli(["setup", "node", "--root", str(tmp_path / "n"), "--no-start", *args], env={"PIFARM_ENROLL_TOKEN": "t"})
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "n" / "etc").exists()


def test_unreachable_aggregator_stops_setup_with_a_clear_error_and_keeps_finished_steps(tmp_path):
    root = tmp_path / "n"
    r = run_cli(["setup", "node", "--root", str(root), "--aggregator", "https://127.0.0.1:9", "--ca-hash",
                 "sha256:" + "0" * 64, "--no-start"], env={"PIFARM_ENROLL_TOKEN": "pfe1_token"})
    assert r.returncode == 1
    assert "cannot reach" in r.stderr and "re-run" in r.stderr
    assert (root / "etc/nvme/hostnqn").is_file() and (root / "etc/pifarm/node.toml").is_file()
    assert not (root / "etc/pifarm/tls/node.crt").exists()


@pytest.mark.s3
def test_s3_bucket_is_created_with_versioning(tmp_path, seaweed, s3_bucket):
    root = tmp_path / "root"
    r = run_cli(["setup", "aggregator", "--root", str(root), "--no-start", "--s3", f"s3://{s3_bucket}/farm",
                 "--s3-endpoint", seaweed.endpoint], env=seaweed.env())
    assert r.returncode == 0, r.stdout + r.stderr
    s3 = seaweed.client()
    assert s3.get_bucket_versioning(Bucket=s3_bucket).get("Status") == "Enabled"
    doc = tomllib.loads((root / CONF).read_text())
    assert doc["store"]["url"] == f"s3://{s3_bucket}/farm" and doc["store"]["endpoint_url"] == seaweed.endpoint


def test_unreachable_s3_fails_setup_clearly(tmp_path):
    r = run_cli(["setup", "aggregator", "--root", str(tmp_path / "r"), "--no-start", "--s3", "s3://b/p",
                 "--s3-endpoint", "http://127.0.0.1:9"],
                env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"})
    assert r.returncode == 1 and "unreachable" in r.stderr

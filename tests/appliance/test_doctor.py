"""`pifarm doctor`: every check against files the test writes (a fake /sys, /proc, /etc tree
whose layout is the kernel's), real sockets for the network checks, and this very machine."""

from __future__ import annotations

import datetime as dt
import json
import threading
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pifarm.appliance import doctor as d
from pifarm.pki.farm import AggregatorPki
from pifarm.pki import certs as x
from tests.support.procs import free_port, run_cli


def _env(tmp_path: Path, role: str = "node", config: dict | None = None) -> d.Env:
    for sub in ("sys/module", "sys/class/net", "proc/sys/net/core", "proc/sys/net/ipv4", "etc", "modules"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    return d.Env(role=role, config=config or {}, sys_root=tmp_path / "sys", proc_root=tmp_path / "proc",
                 etc_root=tmp_path / "etc", modules_dir=tmp_path / "modules", timeout=2.0)


def _by(results, name):
    return [r for r in results if r.check == name]


def _status(results, name) -> str:
    (r,) = _by(results, name)
    return r.status


def test_modules_loaded_available_missing(tmp_path):
    env = _env(tmp_path, role="aggregator")
    (tmp_path / "sys/module/nvmet").mkdir()
    (tmp_path / "modules/modules.dep").write_text("kernel/drivers/nvme/target/nvmet-tcp.ko.xz: kernel/x/nvmet.ko\n")
    res = d.check_modules(env)
    assert _status(res, "module nvmet") == "pass"
    r = _by(res, "module nvmet-tcp")[0]
    assert r.status == "warn" and "modprobe nvmet-tcp" in r.fix
    env = _env(tmp_path / "bare", role="node")
    res = d.check_modules(env)
    assert all(r.status == "warn" and "userspace" in r.detail for r in res)


def test_configfs_mount(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "proc/mounts").write_text("proc /proc proc rw 0 0\n")
    assert d.check_configfs(env)[0].status == "warn"
    (tmp_path / "proc/mounts").write_text("configfs /sys/kernel/config configfs rw,relatime 0 0\n")
    assert d.check_configfs(env)[0].status == "pass"


def test_host_identity(tmp_path):
    env = _env(tmp_path)
    (r,) = d.check_identity(env)
    # the identity is made by `pifarm node identity`, not by enrolling (issue 20)
    assert r.status == "fail" and f"pifarm node identity --root {tmp_path / 'etc/nvme'}" in r.fix
    (tmp_path / "etc/nvme").mkdir()
    (tmp_path / "etc/nvme/hostid").write_text("6b1c1a3e-6a45-4a5e-9a55-7b8b1f0c2d11\n")
    (tmp_path / "etc/nvme/hostnqn").write_text("garbage\n")
    assert d.check_identity(env)[0].status == "fail"
    (tmp_path / "etc/nvme/hostnqn").write_text("nqn.2014-08.org.nvmexpress:uuid:6b1c1a3e-6a45-4a5e-9a55-7b8b1f0c2d11\n")
    assert d.check_identity(env)[0].status == "pass"


def _nic(tmp_path, name, speed, duplex, state="up", physical=True):
    p = tmp_path / "sys/class/net" / name
    p.mkdir(parents=True)
    (p / "speed").write_text(f"{speed}\n")
    (p / "duplex").write_text(f"{duplex}\n")
    (p / "operstate").write_text(f"{state}\n")
    if physical:
        (p / "device").mkdir()
    return p


def test_link_speed_and_duplex(tmp_path):
    env = _env(tmp_path)
    assert d.check_links(env)[0].status == "warn"  # nothing physical up
    _nic(tmp_path, "eth0", 1000, "full")
    _nic(tmp_path, "eth1", 100, "full")
    _nic(tmp_path, "eth2", 1000, "half")
    _nic(tmp_path, "eth3", 10, "full", state="down")
    _nic(tmp_path, "veth0", 10000, "full", physical=False)
    res = d.check_links(env)
    assert {r.check: r.status for r in res} == {"link eth0": "pass", "link eth1": "warn", "link eth2": "fail"}


def test_bond_mode(tmp_path):
    env = _env(tmp_path)
    assert d.check_bond(env)[0].status == "pass"
    b = tmp_path / "sys/class/net/bond0/bonding"
    b.mkdir(parents=True)
    (b / "mode").write_text("balance-rr 0\n")
    assert d.check_bond(env)[0].status == "warn"
    (b / "mode").write_text("802.3ad 4\n")
    assert d.check_bond(env)[0].status == "pass"


def test_sysctls_and_bbr(tmp_path):
    env = _env(tmp_path)
    core, ipv4 = tmp_path / "proc/sys/net/core", tmp_path / "proc/sys/net/ipv4"
    (core / "rmem_max").write_text("212992\n")
    (core / "wmem_max").write_text(f"{16 * 2**20}\n")
    (ipv4 / "tcp_congestion_control").write_text("cubic\n")
    (ipv4 / "tcp_available_congestion_control").write_text("reno cubic\n")
    res = {r.check: r.status for r in d.check_sysctls(env)}
    assert res == {"sysctl net.core.rmem_max": "warn", "sysctl net.core.wmem_max": "pass",
                   "sysctl net.ipv4.tcp_congestion_control": "warn"}
    assert d.check_bbr(env)[0].status == "warn"
    (ipv4 / "tcp_available_congestion_control").write_text("reno cubic bbr\n")
    assert d.check_bbr(env)[0].status == "pass"


def test_disk_against_the_cache_budget(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob").write_bytes(b"x" * 4096)
    assert d.check_disk(_env(tmp_path, config={"cache": {"root": str(cache)}}))[0].status == "warn"  # no budget
    assert d.check_disk(_env(tmp_path, config={"cache": {"root": str(cache), "max_bytes": "1MiB"}}))[0].status == "pass"
    huge = d.check_disk(_env(tmp_path, config={"cache": {"root": str(cache), "max_bytes": "900TiB"}}))[0]
    assert huge.status == "fail" and "lower [cache] max_bytes" in huge.fix
    assert d.check_disk(_env(tmp_path, config={"cache": {"root": str(cache), "max_bytes": "lots"}}))[0].status == "fail"


class _DateServer:
    """A real HTTP server on loopback whose clock is `offset` seconds off."""

    def __init__(self, offset: float):
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def date_time_string(self, timestamp=None):
                now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=outer.offset)
                return format_datetime(now, usegmt=True)

            def log_message(self, *a):
                pass

        self.offset = offset
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("offset, status", [(0, "pass"), (-20, "warn"), (600, "fail")])
def test_clock_skew_against_the_aggregator(tmp_path, offset, status):
    srv = _DateServer(offset)
    try:
        res = d.check_aggregator(_env(tmp_path, config={"node": {"aggregator": srv.url}}))
    finally:
        srv.close()
    assert _status(res, "aggregator") == "pass"
    assert _status(res, "clock skew") == status


def test_unreachable_aggregator_fails_with_a_fix(tmp_path):
    res = d.check_aggregator(_env(tmp_path, config={"node": {"aggregator": f"http://127.0.0.1:{free_port()}"}}))
    r = _by(res, "aggregator")[0]
    assert r.status == "fail" and "pifarm-aggregator" in r.fix
    assert _status(res, "clock skew") == "warn"
    assert d.check_aggregator(_env(tmp_path))[0].status == "fail"  # no URL configured at all


def test_s3_reachability(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    assert d.check_s3(_env(tmp_path))[0].status == "pass"  # none configured
    cfg = {"s3": {"url": "s3://farm/models", "endpoint_url": f"http://127.0.0.1:{free_port()}"}}
    assert d.check_s3(_env(tmp_path, config=cfg))[0].status == "fail"


@pytest.mark.s3
def test_s3_reachable_on_a_real_seaweedfs(tmp_path, seaweed, s3_bucket, monkeypatch):
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    seaweed.client().create_bucket(Bucket=s3_bucket)
    cfg = {"s3": {"url": f"s3://{s3_bucket}/p", "endpoint_url": seaweed.endpoint}}
    r = d.check_s3(_env(tmp_path, config=cfg))[0]
    assert r.status == "pass", r.detail


def test_tflite_runtime_is_importable_here(tmp_path):
    assert d.check_tflite(_env(tmp_path))[0].status == "pass"


def test_delegates(tmp_path):
    lib = tmp_path / "libfake_delegate.so"
    lib.write_bytes(b"\x7fELF")
    cfg = {"inference": {"models": {"a": {"delegate": str(lib)}, "b": {"delegate": str(tmp_path / "missing.so")}}}}
    res = {r.check: r.status for r in d.check_delegates(_env(tmp_path, config=cfg))}
    assert res == {"delegate a": "pass", "delegate b": "warn"}
    assert d.check_delegates(_env(tmp_path))[0].status == "pass"


def test_certificate_expiry(tmp_path):
    pki = AggregatorPki(tmp_path / "agg")
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    good = pki.issue_client("pi1", tmp_path / "good")
    expired = pki.issue_client("pi2", tmp_path / "old", days=1, not_before=x.utcnow() - dt.timedelta(days=5))
    soon = pki.issue_client("pi3", tmp_path / "soon", days=10)
    for tls, status in ((good, "pass"), (expired, "fail"), (soon, "warn")):
        cfg = {"node": {"tls_cert": str(tls.cert), "tls_key": str(tls.key), "tls_ca": str(tls.bundle)}}
        assert d.check_certificates(_env(tmp_path, config=cfg))[0].status == status


def test_a_crashing_check_is_a_failure_not_a_crash(tmp_path):
    def check_boom(env):
        raise RuntimeError("probe exploded")

    (r,) = d.run(_env(tmp_path), [check_boom])
    assert r.status == "fail" and "probe exploded" in r.detail


def test_doctor_on_this_machine_cli_json_and_exit_code(tmp_path):
    """The real machine, through the real CLI: this host has no nvmet, which must be a warning
    pointing at the userspace path; a node without identity or aggregator fails (exit 1)."""
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\naggregator = "http://127.0.0.1:{free_port()}"\n[cache]\nroot = "{tmp_path}"\n')
    r = run_cli(["doctor", "--role", "node", "--config", str(cfg), "--json"])
    doc = json.loads(r.stdout)
    results = doc["checks"]
    assert doc["role"] == "node" and doc["config"] == str(cfg)  # issue 20: role and summary in --json
    assert doc["summary"] == {s: sum(x["status"] == s for x in results) for s in ("pass", "warn", "fail")}
    assert doc["ok"] is (doc["summary"]["fail"] == 0)
    ident = [x for x in results if x["check"] == "host identity"]
    if ident and ident[0]["status"] == "fail":
        assert "pifarm node identity" in ident[0]["fix"]  # not enrollment first
    assert {x["status"] for x in results} <= {"pass", "warn", "fail"}
    assert all(x["fix"] for x in results if x["status"] == "fail")
    mods = [x for x in results if x["check"].startswith("module ")]
    assert mods and all(x["status"] in ("pass", "warn") for x in mods)
    if not Path("/sys/module/nvme_tcp").exists() and not any(x["status"] == "pass" for x in mods):
        assert "userspace" in mods[0]["detail"]
    failed = [x for x in results if x["status"] == "fail"]
    assert (r.returncode == 1) == bool(failed)
    assert any(x["check"] == "aggregator" for x in failed)
    r = run_cli(["doctor", "--role", "aggregator", "--config", str(tmp_path / "missing.toml")])
    assert r.returncode == 2 and "does not exist" in r.stderr

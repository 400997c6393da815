"""`pifarm doctor` checks the HAProxy socket when [haproxy] socket is set, and the sync's systemd
unit verifies cleanly and is hardened like the other units."""

from __future__ import annotations

from pifarm.appliance.doctor import FAIL, PASS, Env
from pifarm.appliance.haproxy.doctor import check_haproxy
from tests.appliance.test_units import SYSTEMD, _analyze, _directives, _score, _staged, _verify
from tests.haproxy.harness import HAProxyProc
from tests.support.procs import free_port

UNIT = "pifarm-haproxy-sync.service"


def _env(sock: str) -> Env:
    return Env(role="aggregator", config={"haproxy": {"socket": sock}})


def test_doctor_without_haproxy_section_says_nothing():
    assert check_haproxy(Env(role="aggregator")) == []


def test_doctor_fails_on_a_missing_socket_and_passes_on_a_real_haproxy(tmp_path, short_dir, haproxy_bin):
    sock = str(short_dir / "h.sock")
    res = check_haproxy(_env(sock))
    assert [r.status for r in res] == [FAIL] and "not there" in res[0].detail and "pifarm haproxy render" in res[0].fix
    cfg = tmp_path / "h.cfg"
    cfg.write_text(f"global\n    stats socket {sock} mode 600 level operator\ndefaults\n    mode http\n"
                   f"    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
                   f"frontend f\n    bind 127.0.0.1:{free_port()}\n    default_backend all_models\n"
                   "backend all_models\n")
    proxy = HAProxyProc(cfg, sock, tmp_path / "h.log").start()
    try:
        res = {r.check: r for r in check_haproxy(_env(sock))}
        assert res["haproxy runtime socket"].status == PASS and "HAProxy 2." in res["haproxy runtime socket"].detail
        assert res["haproxy runtime level"].status == FAIL  # operator level cannot drive servers
        assert res["haproxy backends"].status == PASS
    finally:
        proxy.stop()


def test_the_sync_unit_verifies_cleanly(tmp_path):
    r = _verify(_analyze(), _staged(tmp_path, UNIT))
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout


def test_the_sync_unit_is_hardened():
    d = _directives(UNIT)
    assert d["DynamicUser"] == ["yes"] and d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""] and "@system-service" in d["SystemCallFilter"]
    assert d["SupplementaryGroups"] == ["haproxy"]  # the runtime socket is mode 660, group haproxy
    assert "haproxy sync" in d["ExecStart"][0]


def test_the_sync_unit_scores_like_the_inference_unit(tmp_path):
    # `systemd-analyze security --offline` 1.3 (systemd 252); the inference unit, the tightest, is 1.0
    assert _score(_analyze(), _staged(tmp_path, UNIT)) <= 1.5

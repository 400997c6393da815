"""`pifarm enroll token create|list|revoke`: the secret printed once (or written 0600), never
listed, withdrawn on request; bad input is one clear line."""

from __future__ import annotations

import json
import stat

from pifarm.pki.tokens import TokenStore
from tests.support.procs import run_cli


def test_token_lifecycle_through_the_cli(tmp_path):
    d = str(tmp_path / "agg")
    r = run_cli(["enroll", "token", "create", "--data-dir", d, "--ttl", "30m", "--note", "pi7"])
    assert r.returncode == 0 and r.stdout.startswith("pfe1_") and "one use" in r.stderr
    secret = r.stdout.strip()
    out = tmp_path / "t"
    assert run_cli(["enroll", "token", "create", "--data-dir", d, "--out", str(out)]).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().startswith("pfe1_")
    listed = run_cli(["enroll", "token", "list", "--data-dir", d, "--json"])
    tokens = json.loads(listed.stdout)
    assert len(tokens) == 2 and all(t["state"] == "valid" for t in tokens)
    assert secret not in listed.stdout and "sha256" not in listed.stdout
    tid = next(t["id"] for t in tokens if t["note"] == "pi7")
    assert run_cli(["enroll", "token", "revoke", tid, "--data-dir", d]).returncode == 0
    assert [t.id for t in TokenStore(tmp_path / "agg").list()] != [] and \
        tid not in [t.id for t in TokenStore(tmp_path / "agg").list()]
    r = run_cli(["enroll", "token", "revoke", tid, "--data-dir", d])
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_bad_ttl_and_host_are_one_line_errors(tmp_path):
    for args in (["--ttl", "9d"], ["--host", "not-an-nqn"]):
        r = run_cli(["enroll", "token", "create", "--data-dir", str(tmp_path), *args])
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_revoking_an_unknown_host_is_one_line(tmp_path):
    r = run_cli(["enroll", "revoke", "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
                 "--data-dir", str(tmp_path)])
    assert r.returncode == 1 and "not enrolled" in r.stderr and len(r.stderr.strip().splitlines()) == 1

"""Issue 11, finding 6: DH-HMAC-CHAP secrets never reach a command line (/proc/<pid>/cmdline is
readable by every local user). With a secret, the connect options travel to /dev/nvme-fabrics
through a child's stdin; without one, nvme-cli runs as before."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pifarm.initiator.fabrics_write import options
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.kernel_attach import AttachSettings, KernelAttacher, run_bounded
from pifarm.target.dhchap import gen_dhchap_key

SUB = "nqn.2024-01.io.pifarm:agg"


class Recorder:
    def __init__(self, rc=0, out="instance=3,cntlid=1"):
        self.calls: list[tuple[list[str], str | None]] = []
        self.rc, self.out = rc, out

    def __call__(self, argv, timeout, input=None):
        self.calls.append((list(argv), input))
        return self.rc, self.out


def test_connect_with_secrets_keeps_them_off_argv(tmp_path):
    ident = ensure_identity(tmp_path / "id")
    key, ctrl_key = str(gen_dhchap_key(ident.hostnqn, 1)), str(gen_dhchap_key(SUB, 1))
    rec = Recorder()
    a = KernelAttacher(AttachSettings("10.0.0.5", 4420, dhchap_secret=key, dhchap_ctrl_secret=ctrl_key), ident,
                       sys_root=tmp_path, runner=rec)
    a.connect(SUB)
    [(argv, stdin)] = rec.calls
    assert not any(key in x or ctrl_key in x or "dhchap" in x for x in argv)
    fields = dict(kv.split("=", 1) for kv in stdin.split(","))
    assert fields["dhchap_secret"] == key and fields["dhchap_ctrl_secret"] == ctrl_key
    assert fields["nqn"] == SUB and fields["traddr"] == "10.0.0.5" and fields["trsvcid"] == "4420"
    assert fields["hostnqn"] == ident.hostnqn and fields["transport"] == "tcp"


def test_connect_without_secrets_still_uses_nvme_cli(tmp_path):
    rec = Recorder()
    KernelAttacher(AttachSettings("10.0.0.5", 4420), ensure_identity(tmp_path / "id"), sys_root=tmp_path,
                   runner=rec).connect(SUB)
    [(argv, stdin)] = rec.calls
    assert argv[1] == "connect" and stdin is None


def test_an_already_connected_answer_is_not_a_failure(tmp_path):
    ident = ensure_identity(tmp_path / "id")
    rec = Recorder(rc=1, out="already connected")
    KernelAttacher(AttachSettings("10.0.0.5", 4420, dhchap_secret=str(gen_dhchap_key(ident.hostnqn, 1))), ident,
                   sys_root=tmp_path, runner=rec).connect(SUB)


def test_options_refuse_an_injected_option():
    with pytest.raises(ValueError):
        options({"nqn": "nqn.2024-01.x,dhchap_secret=evil"})


def test_the_secret_reaches_the_child_on_stdin_only():
    rc, out = run_bounded([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"], 30, input="terces")
    assert rc == 0 and out.strip() == "secret"


def test_the_helper_reports_like_nvme_cli_without_fabrics():
    # no /dev/nvme-fabrics here (or no root): one line, exit 1, never a traceback
    p = subprocess.run([sys.executable, "-m", "pifarm.initiator.fabrics_write"], input="nqn=x", capture_output=True,
                       text=True, timeout=60)
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr

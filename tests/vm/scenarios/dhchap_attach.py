"""DH-HMAC-CHAP through the node's kernel attach (trixie's 6.12 kernel has NVME_AUTH): the right
host key connects, a wrong or missing one is refused with a message that says so, and a
bidirectional pair works. Prints one JSON document of facts on the last line.

Measured here: the first *target-side* key rejection after boot can race under TCG (the target
closes the queue while the host still sends; the host then waits out its 60 s admin timeout and
reports an I/O error instead of "Key was rejected"). Later rejections answer in about a second.
So the wrong-key case runs last, with a bound above that timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

from pifarm.initiator.identity import ensure_identity  # noqa: E402
from pifarm.initiator.kernel_attach import AttachSettings, KernelAttacher  # noqa: E402

C = Path("/sys/kernel/config/nvmet")
NQN = "nqn.2024-01.io.pifarm:vm-auth"
SCRATCH = Path(os.environ.get("PIFARM_VM_SCRATCH", "/scratch"))


def gen(nqn: str) -> str:
    return subprocess.run(["nvme", "gen-dhchap-key", f"--nqn={nqn}", "--hmac=1"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def main() -> None:
    ident = ensure_identity("/tmp/auth-identity")
    img = SCRATCH / "auth.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    s = C / "subsystems" / NQN
    s.mkdir()
    (s / "attr_allow_any_host").write_text("0")
    (s / "namespaces" / "1").mkdir()
    (s / "namespaces" / "1" / "device_path").write_text(str(img))
    (s / "namespaces" / "1" / "enable").write_text("1")
    h = C / "hosts" / ident.hostnqn
    h.mkdir()
    key, wrong, ctrl_key = gen(ident.hostnqn), gen(ident.hostnqn), gen(NQN)
    (h / "dhchap_key").write_text(key)
    os.symlink(h, s / "allowed_hosts" / ident.hostnqn)
    p = C / "ports" / "1"
    p.mkdir()
    for k, v in (("addr_trtype", "tcp"), ("addr_adrfam", "ipv4"), ("addr_traddr", "127.0.0.1"), ("addr_trsvcid", "4420")):
        (p / k).write_text(v)
    os.symlink(s, p / "subsystems" / NQN)

    facts = {}

    def attempt(label: str, **secrets) -> None:
        a = KernelAttacher(AttachSettings("127.0.0.1", 4420, command_timeout=90, **secrets), ident)
        t0 = time.monotonic()
        res = a.attach_once()
        facts[label] = {"state": res.state, "error": res.error, "controllers": res.controllers,
                        "offered": list(res.offered), "seconds": round(time.monotonic() - t0, 1)}
        for nqn in res.controllers:
            a.disconnect(nqn)
        print(label, facts[label], flush=True)

    attempt("right_key", dhchap_secret=key)
    attempt("no_key")
    (h / "dhchap_ctrl_key").write_text(ctrl_key)
    attempt("bidirectional", dhchap_secret=key, dhchap_ctrl_secret=ctrl_key)
    attempt("wrong_ctrl_key", dhchap_secret=key, dhchap_ctrl_secret=gen(NQN))
    attempt("wrong_key", dhchap_secret=wrong)
    print(json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()

"""`pifarm nvme discover|ls|read` and `pifarm target serve-userspace`, through the real CLI."""

from __future__ import annotations

import subprocess
import sys

from pifarm.appliance.cli import main
from pifarm.signed.manifest import namespace_uuid
from tests.nvme.conftest import HOSTNQN, OTHER_HOST, SUBNQN, make_volume
from tests.support.procs import free_port, stop_process
from tests.support.wait import wait_for, wait_listening


def test_discover_lists_the_subsystem(target, capsys):
    assert main(["nvme", "discover", f"127.0.0.1:{target.port}", "--hostnqn", HOSTNQN]) == 0
    out = capsys.readouterr().out
    assert "Discovery Log Number of Records 2" in out
    assert f"subnqn:  {SUBNQN}" in out and f"trsvcid: {target.port}" in out


def test_ls_shows_nsid_size_uuid_nguid(target, volume, capsys):
    assert main(["nvme", "ls", f"127.0.0.1:{target.port}", "--subnqn", SUBNQN, "--hostnqn", HOSTNQN]) == 0
    rows = capsys.readouterr().out.splitlines()
    nsid, size, uid, nguid, mode = rows[1].split()
    assert (nsid, int(size), mode) == ("1", volume.path.stat().st_size, "ro")
    assert uid == str(namespace_uuid(volume.manifest.digest))


def test_read_writes_the_requested_bytes_to_stdout(target, volume, capsysbinary):
    args = ["nvme", "read", f"127.0.0.1:{target.port}", "--subnqn", SUBNQN, "--hostnqn", HOSTNQN, "--nsid", "1"]
    assert main(args + ["--offset", "4097", "--length", "100000", "-g", "-G"]) == 0
    assert capsysbinary.readouterr().out == volume.path.read_bytes()[4097:104097]
    assert main(args) == 0
    assert capsysbinary.readouterr().out == volume.path.read_bytes()


def test_bad_input_gets_one_line_and_the_right_exit_code(target, capsys):
    assert main(["nvme", "ls", "127.0.0.1:99999", "--subnqn", SUBNQN, "--hostnqn", HOSTNQN]) == 2
    assert "port 99999 out of range" in capsys.readouterr().err
    assert main(["nvme", "ls", f"127.0.0.1:{target.port}", "--subnqn", SUBNQN, "--hostnqn", OTHER_HOST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "host NQN is not allowed" in err
    assert main(["nvme", "read", f"127.0.0.1:{target.port}", "--subnqn", SUBNQN, "--hostnqn", HOSTNQN,
                 "--nsid", "1", "--offset", str(1 << 40)]) == 2
    assert "runs past the end of namespace 1" in capsys.readouterr().err
    assert main(["target", "serve-userspace", "--data-dir", "/nonexistent"]) == 2
    assert "--allow-host" in capsys.readouterr().err


def test_serve_userspace_exports_volumes_published_while_it_runs(tmp_path, capsys):
    data = tmp_path / "volumes"  # created only at the first publish, after the target started
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pifarm", "target", "serve-userspace", "--data-dir", str(data),
                             "--listen", f"127.0.0.1:{port}", "--subnqn", SUBNQN, "--allow-host", HOSTNQN],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        vol = make_volume(tmp_path / "pub", "late", 3, (5000,))
        (data / "late").mkdir(parents=True)
        (data / "late" / "3.vol").write_bytes(vol.path.read_bytes())
        want = str(namespace_uuid(vol.manifest.digest))

        def listed() -> bool:
            main(["nvme", "ls", f"127.0.0.1:{port}", "--subnqn", SUBNQN, "--hostnqn", HOSTNQN])
            return want in capsys.readouterr().out

        wait_for(listed, "the new volume to appear", timeout=60, interval=0.1)  # the target rescans every 2 s
    finally:
        stop_process(proc, timeout=10)

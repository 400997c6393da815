"""Host identity: /etc/nvme/hostnqn + hostid written once, never changed (issue 6)."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from pifarm.errors import ConfigError
from pifarm.initiator.identity import UUID_NQN_PREFIX, ensure_identity, identity_root, read_identity
from tests.support.procs import pifarm


def test_first_start_writes_both_files_and_later_starts_only_read_them(tmp_path):
    first = ensure_identity(tmp_path)
    assert first.created == ("hostid", "hostnqn")
    assert first.hostnqn == UUID_NQN_PREFIX + first.hostid
    assert (tmp_path / "hostnqn").read_text() == first.hostnqn + "\n"
    assert (tmp_path / "hostid").read_text() == first.hostid + "\n"
    inodes = {n: (tmp_path / n).stat().st_ino for n in ("hostnqn", "hostid")}
    again = ensure_identity(tmp_path)
    assert (again.hostnqn, again.hostid, again.created) == (first.hostnqn, first.hostid, ())
    assert {n: (tmp_path / n).stat().st_ino for n in ("hostnqn", "hostid")} == inodes
    assert read_identity(tmp_path) == again


def test_an_existing_hostnqn_is_kept_and_the_hostid_completed_from_it(tmp_path):
    hid = str(uuid.uuid4())
    (tmp_path / "hostnqn").write_text(f"{UUID_NQN_PREFIX}{hid}\n")
    ident = ensure_identity(tmp_path)
    assert ident.hostid == hid and ident.created == ("hostid",)


def test_a_custom_hostnqn_is_kept_verbatim_with_a_fresh_hostid(tmp_path):
    (tmp_path / "hostnqn").write_text("nqn.2024-01.io.example:pi-rack3-slot7\n")
    ident = ensure_identity(tmp_path)
    assert ident.hostnqn == "nqn.2024-01.io.example:pi-rack3-slot7"
    uuid.UUID(ident.hostid)
    assert (tmp_path / "hostnqn").read_text() == "nqn.2024-01.io.example:pi-rack3-slot7\n"


def test_an_existing_hostid_names_the_new_hostnqn(tmp_path):
    hid = str(uuid.uuid4())
    (tmp_path / "hostid").write_text(hid.upper() + "\n")
    ident = ensure_identity(tmp_path)
    assert ident.hostnqn == UUID_NQN_PREFIX + hid and ident.created == ("hostnqn",)


@pytest.mark.parametrize("name,content,needle", [
    ("hostnqn", "not-an-nqn\n", "not an NVMe qualified name"),
    ("hostid", "xyz\n", "is not a UUID"),
])
def test_a_malformed_file_is_an_error_and_is_left_untouched(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=needle):
        ensure_identity(tmp_path)
    assert (tmp_path / name).read_text() == content


def test_concurrent_first_starts_agree_on_one_identity(tmp_path):
    results, errors = [], []

    def start():
        try:
            results.append(ensure_identity(tmp_path))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len({(r.hostnqn, r.hostid) for r in results}) == 1
    assert sum(len(r.created) for r in results) == 2  # each file written by exactly one starter
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_identity_root_accepts_the_directory_or_the_hostnqn_file(tmp_path):
    assert identity_root(tmp_path / "hostnqn") == tmp_path
    assert identity_root(tmp_path) == tmp_path
    assert str(identity_root(None)) == "/etc/nvme"




def test_cli_node_identity_prints_the_same_identity_every_time(tmp_path):
    r1 = pifarm("node", "identity", "--root", str(tmp_path), "--json")
    assert r1.returncode == 0, r1.stderr
    r2 = pifarm("node", "identity", "--root", str(tmp_path))
    assert r2.returncode == 0, r2.stderr
    doc = json.loads(r1.stdout)
    assert f"hostnqn: {doc['hostnqn']}" in r2.stdout and f"hostid:  {doc['hostid']}" in r2.stdout
    assert doc["created"] == ["hostid", "hostnqn"]


def test_cli_node_identity_no_create_fails_with_one_clear_line(tmp_path):
    r = pifarm("node", "identity", "--root", str(tmp_path / "none"), "--no-create")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no NVMe host identity" in r.stderr
    assert not (tmp_path / "none").exists()

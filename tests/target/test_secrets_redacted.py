"""Issue 11, finding 7: a failed configfs write of a DH-HMAC-CHAP key must not carry the key
into the error, which becomes the target's `last_error` in the open GET /health and the log."""

from __future__ import annotations

import errno

import pytest

from pifarm.errors import ConfigfsError
from pifarm.signed.integrity import digest_bytes
from pifarm.target.configfs import Root, configfs_error
from pifarm.target.dhchap import gen_dhchap_key, redact
from pifarm.target.reconciler import apply, diff
from pifarm.target.spec import Export, build_spec, observe
from pifarm.testing.fake_configfs import FakeConfigfs

HOST = "nqn.2014-08.org.pifarm:node:n1"


def test_configfs_error_never_shows_a_key():
    key = str(gen_dhchap_key(HOST, 1))
    e = configfs_error("write", "/sys/kernel/config/nvmet", f"hosts/{HOST}/dhchap_key", OSError(errno.EINVAL, "x"), key)
    assert key not in str(e) and "<secret>" in str(e)
    plain = configfs_error("write", "/sys", "ports/1/addr_traddr", OSError(errno.EINVAL, "x"), "10.0.0.1")
    assert "10.0.0.1" in str(plain)  # ordinary values stay, they help


def test_a_refused_key_write_leaves_no_secret_in_the_apply_error(tmp_path):
    vol = tmp_path / "m-v1.vol"
    vol.write_bytes(b"\0" * 4096)
    good = str(gen_dhchap_key(HOST, 1))
    bad = good.replace("DHHC-1:01:", "DHHC-1:07:")  # the kernel refuses hash 07 (EINVAL)
    spec = build_spec(subsystem_nqn="nqn.2014-08.org.pifarm:aggregator:t",
                      exports=[Export("m", 1, digest_bytes(b"1"), str(vol))], nsids={Export("m", 1, digest_bytes(b"1"), str(vol)).key: 1},
                      ports={1: ("127.0.0.1", 4420)}, hosts={HOST: {"dhchap_key": bad}}, buffered_io=False)
    root = Root(FakeConfigfs("6.12"))
    with pytest.raises(ConfigfsError) as ei:
        apply(root, diff(spec, observe(root)))
    text = str(ei.value)
    assert "dhchap_key" in text and bad not in text and bad.split(":")[2] not in text


def test_redact_finds_keys_anywhere():
    key = str(gen_dhchap_key(HOST, 2))
    assert key not in redact(f"nvme said: bad key '{key}' for {HOST}")
    assert HOST in redact(f"host {HOST}")

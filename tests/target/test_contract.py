"""The configfs contract: what nvmet accepts and refuses, and the reconciler on top of it.

These tests run against whatever `cfs_root` is (tests/target/conftest.py): the in-memory fake
(profiles 6.1 and 6.12) by default, or the REAL kernel when PIFARM_CONFIGFS_ROOT is set.

How the VM tier runs them against the real kernel (as root inside the VM, Debian 12's 6.1 and
Debian 13's 6.12):

    modprobe nvmet nvmet-tcp        # configfs mounted at /sys/kernel/config
    PIFARM_CONFIGFS_ROOT=/sys/kernel/config/nvmet python -m pytest tests/target/test_contract.py \
        -q -p no:cacheprovider --basetemp=$PIFARM_VM_SCRATCH/pytest

Needs: a writable directory for the backing files (`--basetemp` on the VM's ext4 scratch disk;
nvmet opens them O_RDWR, so a read-only filesystem gives EROFS; on an overlay over tmpfs the
tests still pass because `buffered_io` follows an O_DIRECT probe); a loopback interface that is up
(ports bind 127.0.0.1 on a free TCP port); for `test_tmpfs_needs_buffered_io`, any writable tmpfs
mount (/dev/shm, /run or /tmp) - buffered_io=1 is what makes tmpfs-backed files work on kernels
without tmpfs O_DIRECT (6.1). All 16 passed in the VM on Debian's 6.1.0-50 and 6.12.117 kernels.
Every test uses unique NQNs/port ids and removes only what it created, so a shared tree is safe.
Expectations marked REAL-KERNEL NOTE are what the real kernel taught the fake.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pifarm.errors import ConfigfsError, Conflict, NotFound, UsageError
from pifarm.signed.integrity import digest_bytes
from pifarm.target.configfs import Mode
from pifarm.target.dhchap import gen_dhchap_key
from pifarm.target.nvmetcli_json import dump, restore
from pifarm.target.reconciler import apply, diff
from pifarm.target.spec import Export, Scope, TargetSpec, build_spec, observe, supports_o_direct
from tests.conftest import require


def backing(tmp_path: Path, name: str = "vol", size: int = 1 << 20) -> str:
    p = tmp_path / f"{name}.vol"
    with open(p, "wb") as f:
        f.truncate(size)
    return str(p)


def raises_errno(code: int):
    return pytest.raises(ConfigfsError, match=rf"\(errno {code}\)")


@pytest.fixture
def cleanup(cfs_root, names):
    """Remove whatever the test created under its unique names, in kernel order."""
    yield
    scope = Scope(frozenset({names.host, names.host2}), frozenset({names.subsys, names.subsys2}),
                  frozenset({names.port, names.port2}))
    apply(cfs_root, diff(TargetSpec(), observe(cfs_root), scope))


def export(tmp_path, i: int) -> Export:
    return Export("m", i, digest_bytes(f"version {i}".encode()), backing(tmp_path, f"m-v{i}"))


def spec_for(names, exports, hosts=None, port=None, addr=("127.0.0.1", 4420)):
    return build_spec(subsystem_nqn=names.subsys, exports=exports, nsids={e.key: e.version for e in exports},
                      ports={port or names.port: addr}, hosts=hosts or {})


# ---- the object model ------------------------------------------------------------------------

def test_mkdir_makes_the_kernel_groups_and_attributes(cfs_root, names, cleanup):
    s = cfs_root.subsystem(names.subsys, Mode.CREATE)
    assert {"attr_allow_any_host", "attr_serial", "attr_model", "attr_version"} <= set(s.attrs())
    assert s.get("attr_allow_any_host") == "0"
    assert s.namespaces == [] and s.allowed_hosts == []
    ns = s.namespace(1, Mode.CREATE)
    assert {"device_path", "device_uuid", "device_nguid", "enable", "buffered_io"} <= set(ns.attrs())
    assert ns.get("enable") == "0" and ns.get("buffered_io") == "0"
    p = cfs_root.port(names.port, Mode.CREATE)
    assert {"addr_trtype", "addr_adrfam", "addr_traddr", "addr_trsvcid", "addr_treq"} <= set(p.attrs())
    assert p.subsystems == []
    h = cfs_root.host(names.host, Mode.CREATE)
    # identity is the path; children are read live
    assert cfs_root.subsystem(names.subsys) == s and [n.nsid for n in s.namespaces] == [1]
    assert h in cfs_root.hosts and p in cfs_root.ports


def test_modes_say_what_the_caller_meant(cfs_root, names, cleanup):
    with pytest.raises(NotFound):
        cfs_root.subsystem(names.subsys, Mode.LOOKUP)
    s = cfs_root.subsystem(names.subsys, Mode.ANY)
    assert cfs_root.subsystem(names.subsys, Mode.ANY) == s
    with pytest.raises(ConfigfsError, match="already exists"):
        cfs_root.subsystem(names.subsys, Mode.CREATE)
    with pytest.raises(UsageError):
        s.namespace(0, Mode.CREATE)
    with pytest.raises(UsageError):
        cfs_root.subsystem("../escape", Mode.CREATE)


def test_kernel_refuses_bad_names(cfs_root, names, cleanup):
    b = cfs_root.backend
    cfs_root.subsystem(names.subsys, Mode.CREATE)
    for bad in ("0", "4294967295", "nsid"):
        with pytest.raises(OSError) as e:
            b.mkdir(f"subsystems/{names.subsys}/namespaces/{bad}")
        assert e.value.errno in (errno.EINVAL, errno.ERANGE), bad
    with pytest.raises(OSError) as e:
        b.mkdir("ports/not-a-number")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        b.mkdir("subsystems/nqn.2014-08.org.nvmexpress.discovery")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:  # allowed_hosts holds links, not objects
        b.mkdir(f"subsystems/{names.subsys}/allowed_hosts/x")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:  # default groups cannot be removed
        b.rmdir(f"subsystems/{names.subsys}/namespaces")
    assert e.value.errno == errno.EPERM


def test_namespace_attributes_are_locked_while_enabled(cfs_root, names, tmp_path, cleanup):
    path = backing(tmp_path)
    ns = cfs_root.subsystem(names.subsys, Mode.CREATE).namespace(1, Mode.CREATE)
    with raises_errno(errno.EINVAL):
        ns.set("device_uuid", "not-a-uuid")
    ns.set("device_path", path)
    ns.set("device_uuid", "12345678-9abc-8def-8123-456789abcdef")
    ns.set("device_nguid", "0102030405060708090a0b0c0d0e0f10")
    ns.set("buffered_io", 0 if supports_o_direct(path) else 1)
    ns.enable()
    assert ns.enabled and ns.get("device_path") == path
    assert ns.get("device_uuid") == "12345678-9abc-8def-8123-456789abcdef"
    assert ns.get("device_nguid") == "01020304-0506-0708-090a-0b0c0d0e0f10"  # read back in UUID form
    with raises_errno(errno.EBUSY):
        ns.set("device_path", path + ".other")
    with raises_errno(errno.EBUSY):
        ns.set("device_uuid", "12345678-9abc-8def-8123-456789abcdee")
    with raises_errno(errno.EINVAL):  # REAL-KERNEL NOTE: buffered_io says EINVAL, not EBUSY
        ns.set("buffered_io", 1)
    ns.enable(False)
    ns.set("device_path", path)
    ns.enable()
    ns.delete()  # an enabled namespace may be removed: nvmet disables it on release
    assert cfs_root.subsystem(names.subsys).namespaces == []


def test_enable_needs_an_openable_backing_file(cfs_root, names, tmp_path, cleanup):
    ns = cfs_root.subsystem(names.subsys, Mode.CREATE).namespace(1, Mode.CREATE)
    ns.set("device_path", str(tmp_path / "missing.vol"))
    with raises_errno(errno.ENOENT):
        ns.enable()
    assert not ns.enabled


def _writable_tmpfs() -> Path | None:
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if fstype == "tmpfs" and "rw" in opts.split(",") and os.access(mnt, os.W_OK) and mnt != "/sys/fs/cgroup":
                return Path(mnt)
    return None


def test_tmpfs_needs_buffered_io(cfs_root, names, tmp_path, cleanup):
    shm = _writable_tmpfs()
    require(shm is not None, "no writable tmpfs mount to put a backing file on")
    d = shm / f"pifarm-test-{names.port}"
    d.mkdir()
    try:
        path = backing(d)
        ns = cfs_root.subsystem(names.subsys, Mode.CREATE).namespace(1, Mode.CREATE)
        ns.set("device_path", path)
        if not supports_o_direct(path):  # 6.1: tmpfs has no O_DIRECT (6.6+ added it)
            with raises_errno(errno.EINVAL):
                ns.enable()
            assert not ns.enabled
        ns.set("buffered_io", 1)
        ns.enable()
        assert ns.enabled
        ns.enable(False)
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_port_address_is_locked_while_linked(cfs_root, names, free_tcp_port, cleanup):
    s = cfs_root.subsystem(names.subsys, Mode.CREATE)
    p = cfs_root.port(names.port, Mode.CREATE)
    with pytest.raises(ConfigfsError):  # no transport/address yet: the port cannot be enabled
        p.link(s)
    assert p.subsystems == []
    for k, v in (("addr_trtype", "tcp"), ("addr_adrfam", "ipv4"), ("addr_traddr", "127.0.0.1"),
                 ("addr_trsvcid", str(free_tcp_port))):
        p.set(k, v)
    with raises_errno(errno.EINVAL):
        p.set("addr_trtype", "carrier-pigeon")
    p.link(s)
    assert p.subsystems == [names.subsys]
    with raises_errno(errno.EACCES):
        p.set("addr_trsvcid", str(free_tcp_port + 1))
    with raises_errno(errno.EBUSY):  # REAL-KERNEL NOTE: a link target cannot be removed (configfs s_links)
        s.delete()
    with raises_errno(errno.ENOTEMPTY):
        p.delete()
    p.unlink(names.subsys)
    p.set("addr_trsvcid", str(free_tcp_port))
    p.delete()


def test_allowed_hosts_rules(cfs_root, names, cleanup):
    s = cfs_root.subsystem(names.subsys, Mode.CREATE)
    h = cfs_root.host(names.host, Mode.CREATE)
    s.set("attr_allow_any_host", 1)
    with raises_errno(errno.EINVAL):
        s.allow_host(h)
    s.set("attr_allow_any_host", 0)
    s.allow_host(h)
    assert s.allowed_hosts == [names.host]
    with raises_errno(errno.EINVAL):
        s.set("attr_allow_any_host", 1)
    with pytest.raises(OSError) as e:  # the same host under another link name
        cfs_root.backend.symlink(f"hosts/{names.host}", f"subsystems/{names.subsys}/allowed_hosts/alias")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:  # only hosts go into allowed_hosts
        cfs_root.backend.symlink(f"subsystems/{names.subsys}", f"subsystems/{names.subsys}/allowed_hosts/self")
    assert e.value.errno == errno.EINVAL
    with raises_errno(errno.EBUSY):
        h.delete()
    with raises_errno(errno.ENOTEMPTY):
        s.delete()
    s.disallow_host(names.host)
    h.delete()
    s.delete()


def test_dhchap_attributes_follow_the_kernel(cfs_root, names, tmp_path, cleanup):
    h = cfs_root.host(names.host, Mode.CREATE)
    key = str(gen_dhchap_key(names.host, 1))
    if not h.supports_dhchap:
        # 6.1 (no CONFIG_NVME_TARGET_AUTH): the reconciler must refuse, never export without auth
        want = spec_for(names, [], hosts={names.host: {"dhchap_key": key}})
        with pytest.raises(Conflict, match="DH-HMAC-CHAP"):
            diff(want, observe(cfs_root), Scope.of(want))
        return
    assert h.get("dhchap_hash") == "hmac(sha256)" and h.get("dhchap_key") == ""
    h.set("dhchap_key", key)
    assert h.get("dhchap_key") == key  # REAL-KERNEL NOTE: secrets read back in plaintext
    for bad in ("secret", "DHHC-1:07:AAAA:"):
        with raises_errno(errno.EINVAL):
            h.set("dhchap_key", bad)
    h.set("dhchap_ctrl_key", str(gen_dhchap_key(names.host, 1)))
    h.set("dhchap_dhgroup", "ffdhe2048")
    assert h.get("dhchap_dhgroup") == "ffdhe2048"


# ---- the reconciler on the same tree ----------------------------------------------------------

def test_apply_builds_everything_and_is_idempotent(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    want = spec_for(names, [export(tmp_path, 1), export(tmp_path, 2)], hosts={names.host: {}},
                    addr=("127.0.0.1", free_tcp_port))
    apply(cfs_root, diff(want, observe(cfs_root), Scope.of(want)))
    assert diff(want, observe(cfs_root), Scope.of(want)) == []
    s = cfs_root.subsystem(names.subsys)
    assert [n.nsid for n in s.namespaces] == [1, 2] and all(n.enabled for n in s.namespaces)
    assert s.get("attr_allow_any_host") == "0" and s.allowed_hosts == [names.host]
    assert cfs_root.port(names.port).subsystems == [names.subsys]


def test_adding_and_retiring_a_version_touch_only_that_namespace(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    e1, e2, e3 = (export(tmp_path, i) for i in (1, 2, 3))
    addr = ("127.0.0.1", free_tcp_port)
    v1 = spec_for(names, [e1, e2], hosts={names.host: {}}, addr=addr)
    apply(cfs_root, diff(v1, observe(cfs_root), Scope.of(v1)))
    before = observe(cfs_root)
    v2 = spec_for(names, [e1, e2, e3], hosts={names.host: {}}, addr=addr)
    ops = diff(v2, before, Scope.of(v2))
    assert ops and all(o.path.startswith(f"subsystems/{names.subsys}/namespaces/3") for o in ops)
    apply(cfs_root, ops)
    after = observe(cfs_root)
    for nsid in (1, 2):  # untouched: still enabled, same attributes
        assert after.subsystems[names.subsys].namespaces[nsid] == before.subsystems[names.subsys].namespaces[nsid]
    assert after.ports == before.ports
    v3 = spec_for(names, [e2, e3], hosts={names.host: {}}, addr=addr)
    ops = diff(v3, after, Scope.of(v3))
    assert [str(o) for o in ops] == [f"write  subsystems/{names.subsys}/namespaces/1/enable = 0",
                                     f"rmdir  subsystems/{names.subsys}/namespaces/1"]
    apply(cfs_root, ops)
    assert diff(v3, observe(cfs_root), Scope.of(v3)) == []


def test_port_move_unlinks_readdresses_relinks(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    a = spec_for(names, [export(tmp_path, 1)], addr=("127.0.0.1", free_tcp_port))
    apply(cfs_root, diff(a, observe(cfs_root), Scope.of(a)))
    b = spec_for(names, [export(tmp_path, 1)], addr=("127.0.0.1", free_tcp_port + 1))
    ops = [str(o) for o in diff(b, observe(cfs_root), Scope.of(b))]
    assert ops == [f"unlink ports/{names.port}/subsystems/{names.subsys}",
                   f"write  ports/{names.port}/addr_trsvcid = {free_tcp_port + 1}",
                   f"link   ports/{names.port}/subsystems/{names.subsys} -> subsystems/{names.subsys}"]
    apply(cfs_root, diff(b, observe(cfs_root), Scope.of(b)))
    assert cfs_root.port(names.port).get("addr_trsvcid") == str(free_tcp_port + 1)


def test_failure_half_way_is_completed_by_the_next_run(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    e1, e2 = export(tmp_path, 1), export(tmp_path, 2)
    os.unlink(e2.path)  # the second volume is missing: its enable must fail
    want = spec_for(names, [e1, e2], hosts={names.host: {}}, addr=("127.0.0.1", free_tcp_port))
    with pytest.raises(ConfigfsError, match=r"step \d+/\d+ .*namespaces/2/enable.*run `pifarm target apply` again"):
        apply(cfs_root, diff(want, observe(cfs_root), Scope.of(want)))
    half = observe(cfs_root)
    assert half.subsystems[names.subsys].namespaces[1].enabled
    assert not half.subsystems[names.subsys].namespaces[2].enabled
    assert names.port not in half.ports  # stopped before exporting anything on a port
    backing(tmp_path, "m-v2")
    ops = diff(want, half, Scope.of(want))
    assert not any(o.path.endswith("namespaces/1/enable") for o in ops)
    apply(cfs_root, ops)
    assert diff(want, observe(cfs_root), Scope.of(want)) == []


def test_scope_leaves_other_peoples_objects_alone(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    foreign = cfs_root.subsystem(names.subsys2, Mode.CREATE)
    cfs_root.host(names.host2, Mode.CREATE)
    foreign.allow_host(cfs_root.host(names.host2))
    want = spec_for(names, [export(tmp_path, 1)], addr=("127.0.0.1", free_tcp_port))
    ops = diff(want, observe(cfs_root), Scope.of(want))
    assert not any(names.subsys2 in o.path or names.host2 in o.path for o in ops)
    apply(cfs_root, ops)
    assert cfs_root.subsystem(names.subsys2).allowed_hosts == [names.host2]


def test_denied_host_loses_link_then_object(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    a = spec_for(names, [export(tmp_path, 1)], hosts={names.host: {}, names.host2: {}}, addr=("127.0.0.1", free_tcp_port))
    apply(cfs_root, diff(a, observe(cfs_root), Scope.of(a)))
    b = spec_for(names, [export(tmp_path, 1)], hosts={names.host: {}}, addr=("127.0.0.1", free_tcp_port))
    ops = [str(o) for o in diff(b, observe(cfs_root), Scope.of(a) | Scope.of(b))]
    assert ops == [f"unlink subsystems/{names.subsys}/allowed_hosts/{names.host2}", f"rmdir  hosts/{names.host2}"]


def test_save_clear_restore_gives_back_the_same_tree(cfs_root, names, tmp_path, free_tcp_port, cleanup):
    hosts = {names.host: {}}
    if cfs_root.host(names.host, Mode.CREATE).supports_dhchap:
        hosts = {names.host: {"dhchap_key": str(gen_dhchap_key(names.host, 1)), "dhchap_dhgroup": "ffdhe2048"}}
    want = spec_for(names, [export(tmp_path, 1), export(tmp_path, 2)], hosts=hosts, addr=("127.0.0.1", free_tcp_port))
    ours = Scope.of(want)
    apply(cfs_root, diff(want, observe(cfs_root), ours))

    def mine(doc):
        return {"hosts": [h for h in doc["hosts"] if h["nqn"] in ours.hosts],
                "subsystems": [s for s in doc["subsystems"] if s["nqn"] in ours.subsystems],
                "ports": [p for p in doc["ports"] if p["portid"] in ours.ports]}

    saved = mine(dump(cfs_root))
    apply(cfs_root, diff(TargetSpec(), observe(cfs_root), ours))  # clear (ours only: the tree may be shared)
    assert mine(dump(cfs_root)) == {"hosts": [], "subsystems": [], "ports": []}
    restore(cfs_root, saved, scope=ours)
    assert mine(dump(cfs_root)) == saved
    assert restore(cfs_root, saved, scope=ours) == 0  # a second restore changes nothing

"""Namespace identification from sysfs attributes (the layout measured on 6.1 in the VM tier:
/sys/block/nvme0n1/{uuid,nguid,wwid,nsid}, device/subsysnqn; hidden multipath paths nvme0c0n1).
The uevent path is proven against the real kernel in tests/vm/test_node_attach.py."""

from __future__ import annotations

import threading
import uuid

from pifarm.initiator.namespaces import NamespaceIndex, read_namespace
from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import namespace_nguid, namespace_uuid

D1, D2 = digest_bytes(b"v1"), digest_bytes(b"v2")


def block(sysfs, name, *, u=None, nguid=None, wwid=None, nqn="nqn.2024-01.io.pifarm:a", nsid=1):
    b = sysfs / "block" / name
    (b / "device").mkdir(parents=True)
    if u is not None:
        (b / "uuid").write_text(f"{u}\n")
    if nguid is not None:
        (b / "nguid").write_text(f"{nguid}\n")
    if wwid is not None:
        (b / "wwid").write_text(f"{wwid}\n")
    (b / "nsid").write_text(f"{nsid}\n")
    (b / "device" / "subsysnqn").write_text(nqn + "\n")
    return b


def test_a_namespace_is_identified_by_uuid_wwid_or_nguid(tmp_path):
    b = block(tmp_path, "nvme0n1", u=namespace_uuid(D1))
    ns = read_namespace(b, tmp_path / "dev")
    assert ns.matches(D1) and not ns.matches(D2)
    assert (ns.dev, ns.subsysnqn, ns.nsid) == (tmp_path / "dev" / "nvme0n1", "nqn.2024-01.io.pifarm:a", 1)
    w = read_namespace(block(tmp_path, "nvme0n2", wwid=f"uuid.{namespace_uuid(D2)}", nsid=2))
    assert w.matches(D2)
    g = read_namespace(block(tmp_path, "nvme0n3", u=uuid.UUID(int=0),
                             nguid=str(uuid.UUID(bytes=namespace_nguid(D1)))))
    assert g.uuid is None and g.matches(D1)  # the kernel's all-zero UUID means "none"


def test_controllers_hidden_paths_and_partitions_are_not_namespaces(tmp_path):
    for name in ("nvme0", "nvme0c0n1", "nvme0n1p1", "vda"):
        assert read_namespace(block(tmp_path, name, u=namespace_uuid(D1))) is None, name


def test_the_index_finds_versions_and_waits_for_one_that_appears_later(tmp_path):
    block(tmp_path, "nvme0n1", u=namespace_uuid(D1))
    idx = NamespaceIndex(tmp_path, tmp_path / "dev")
    events = []
    idx.add_listener(lambda action, ns: events.append((action, ns.name)))
    idx.scan()
    assert idx.find(D1).name == "nvme0n1" and idx.find(D2) is None
    t = threading.Timer(0.3, lambda: block(tmp_path, "nvme0n2", u=namespace_uuid(D2), nsid=2))
    t.start()
    try:
        assert idx.wait_for(D2, 10).name == "nvme0n2"
    finally:
        t.cancel()
    assert idx.wait_for(digest_bytes(b"never"), 0.3) is None
    import shutil

    shutil.rmtree(tmp_path / "block" / "nvme0n1")
    idx.scan()
    assert events == [("add", "nvme0n1"), ("add", "nvme0n2"), ("remove", "nvme0n1")]


def test_a_namespace_with_two_paths_is_found_once_as_its_head(tmp_path):
    """Native multipath (issue 17), the layout measured on 6.1 (tests/vm/test_multipath.py): the
    head nvme0n1's device is the subsystem (nvme-subsys0, which holds subsysnqn), each path
    nvme0cYn1 carries the same ids and points at its controller nvmeY; only the head has /dev."""
    nqn = "nqn.2014-08.org.pifarm:aggregator:shared"
    devices = tmp_path / "devices"
    for d in ("nvme-subsys0", "nvme0", "nvme1"):
        (devices / d).mkdir(parents=True)
        (devices / d / "subsysnqn").write_text(nqn + "\n")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvme0n1").touch()
    for name, parent in (("nvme0n1", "nvme-subsys0"), ("nvme0c0n1", "nvme0"), ("nvme0c1n1", "nvme1")):
        b = tmp_path / "block" / name
        b.mkdir(parents=True)
        (b / "uuid").write_text(f"{namespace_uuid(D1)}\n")
        (b / "nguid").write_text(f"{uuid.UUID(bytes=namespace_nguid(D1))}\n")
        (b / "nsid").write_text("3\n")
        (b / "device").symlink_to(devices / parent)
    idx = NamespaceIndex(tmp_path, dev)
    idx.scan()
    assert [ns.name for ns in idx.namespaces()] == ["nvme0n1"]
    head = idx.find(D1)
    assert (head.dev, head.subsysnqn, head.nsid) == (dev / "nvme0n1", nqn, 3) and head.dev.exists()

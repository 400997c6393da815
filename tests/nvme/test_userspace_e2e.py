"""The pure-Python initiator against the userspace target, end to end over 127.0.0.1."""

from __future__ import annotations

import asyncio
import re

import pytest

from pifarm.cache.store import Cache
from pifarm.errors import SourceError, UsageError
from pifarm.initiator.nvme_tcp import AUTH_MESSAGE, ConnectParams, Controller, NvmeTcpClient
from pifarm.initiator.nvme_tcp.source import make_source
from pifarm.initiator.settings import SourceContext, SourceSpec
from pifarm import nvmewire as w
from pifarm.signed.integrity import BlobRef, StreamVerifier
from pifarm.signed.manifest import namespace_nguid, namespace_uuid
from pifarm.signed.signing import TrustedKeys
from pifarm.target.userspace import ThreadedTarget
from tests.nvme.conftest import HOSTNQN, OTHER_HOST, SUBNQN, make_volume, target_config


def params(t, **kw) -> ConnectParams:
    return ConnectParams("127.0.0.1", t.port, kw.pop("subnqn", SUBNQN), kw.pop("hostnqn", HOSTNQN), **kw)


def test_namespace_identity_comes_from_the_manifest_digest(target, volume):
    with NvmeTcpClient(params(target)) as c:
        [ns] = c.namespaces()
        ident = c.identify()
    digest = volume.manifest.digest
    assert ns.uuid == namespace_uuid(digest)
    assert ns.nguid == namespace_nguid(digest)
    assert ns.size == volume.path.stat().st_size and ns.lba_size == 4096
    assert ns.write_protected
    assert ident.subnqn == SUBNQN and ident.cntrltype == 1 and ident.mdts == 8


@pytest.mark.parametrize("digests,queues", [(False, 1), (True, 2)])
def test_whole_volume_reads_back_byte_for_byte(target, volume, digests, queues):
    want = volume.path.read_bytes()
    with NvmeTcpClient(params(target, hdgst=digests, ddgst=digests, io_queues=queues, queue_depth=4)) as c:
        [ns] = c.namespaces()
        assert c.read(ns, 0, len(want)) == want
        # unaligned start and end, crossing several MDTS-sized commands
        assert c.read(ns, 4095, 2 * 2**20 + 3) == want[4095:4095 + 2 * 2**20 + 3]


def test_reads_pipeline_several_commands_per_queue(target, volume):
    async def run():
        c = await Controller.connect(params(target, queue_depth=8))
        try:
            [nsid] = await c.namespace_ids()
            ns = await c.namespace(nsid)
            q = c.io[0]
            seen = []
            orig = q.driver.send

            def spy(pdu):  # count commands outstanding when each is sent
                if isinstance(pdu, w.CapsuleCmd):
                    seen.append(len(q._pending))
                orig(pdu)

            q.driver.send = spy
            data = await c.read(ns, 0, 3 * 2**20)
            return max(seen), data
        finally:
            await c.close()

    peak, data = asyncio.run(run())
    assert peak >= 2  # several Reads were in flight on one queue at once
    assert data == volume.path.read_bytes()[: 3 * 2**20]


def test_source_delivers_every_blob_and_cache_installs_them(target, volume, tmp_path):
    spec = SourceSpec("nvme-tcp-userspace", address=f"127.0.0.1:{target.port}",
                      options={"subnqn": SUBNQN, "hostnqn": HOSTNQN})
    src = make_source(spec, SourceContext(trusted=TrustedKeys()))
    try:
        assert src.name == "nvme-tcp-userspace"
        assert src.path_state == "unknown"
        for f in volume.manifest.files:
            v = StreamVerifier(f.ref)
            for chunk in src.chunks(f.ref):
                v.update(chunk)
            v.finish()
        big = volume.manifest.files[0]
        assert b"".join(src.chunks(big.ref, start=1000)) == volume.blobs[big.digest][1000:]
        reader = src.volume(volume.manifest.digest)
        assert reader.manifest == volume.manifest
        cache = Cache(tmp_path / "cache")
        for f in volume.manifest.files:
            res = cache.install(f.ref, [src])
            assert res.path.read_bytes() == volume.blobs[f.digest]
        missing = BlobRef("blake3:" + "0" * 64, 10)
        assert src.path_state == "live"
        with pytest.raises(SourceError, match="on no volume"):
            list(src.chunks(missing))
        assert src.path_state == "nothing-offered"  # the node state tells this apart from unreachable
    finally:
        src.close()


def test_source_finds_the_subsystem_through_discovery(target, volume):
    spec = SourceSpec("nvme-tcp-userspace", address=f"127.0.0.1:{target.port}", options={"hostnqn": HOSTNQN})
    src = make_source(spec, SourceContext(trusted=TrustedKeys()))
    try:
        f = volume.manifest.files[3]
        assert b"".join(src.chunks(f.ref)) == volume.blobs[f.digest]
    finally:
        src.close()


def test_disallowed_host_is_refused_with_a_clear_error(target):
    with pytest.raises(w.NvmeStatusError, match="host NQN is not allowed") as e:
        with NvmeTcpClient(params(target, hostnqn=OTHER_HOST)):
            pass
    assert e.value.status == 0x4184
    # ... and the discovery log shows that host no subsystem (as the kernel target does)
    with NvmeTcpClient(params(target, subnqn=w.DISCOVERY_NQN, hostnqn=OTHER_HOST, kato_ms=0)) as c:
        log = c.discovery_log()
    assert [e.subtype for e in log.entries] == [w.SUBTYPE_CURRENT_DISCOVERY]


def test_discovery_log_lists_the_subsystem_for_an_allowed_host(target):
    with NvmeTcpClient(params(target, subnqn=w.DISCOVERY_NQN, kato_ms=0)) as c:
        log = c.discovery_log()
        ident = c.identify()
    assert ident.cntrltype == 2 and ident.subnqn == w.DISCOVERY_NQN
    nvm = [e for e in log.entries if e.subtype == w.SUBTYPE_NVME]
    assert [(e.subnqn, e.traddr, e.trsvcid) for e in nvm] == [(SUBNQN, "127.0.0.1", str(target.port))]


def test_unknown_subsystem_is_refused(target):
    with pytest.raises(w.NvmeStatusError, match="invalid parameters"):
        with NvmeTcpClient(params(target, subnqn="nqn.2024-01.io.pifarm:nope")):
            pass


def test_writes_are_refused_as_write_protected(target, volume):
    async def run():
        c = await Controller.connect(params(target))
        try:
            ns = await c.namespace(1)
            with pytest.raises(w.NvmeStatusError, match="namespace is write protected"):
                await c.write_blocks(ns, 0, 1)
            # the queue stays usable after the refusal
            return await c.read(ns, 0, 4096)
        finally:
            await c.close()

    assert asyncio.run(run()) == volume.path.read_bytes()[:4096]


def test_read_past_the_end_is_a_usage_error_and_raw_lba_range_a_status(target, volume):
    async def run():
        c = await Controller.connect(params(target))
        try:
            ns = await c.namespace(1)
            with pytest.raises(UsageError, match="outside namespace"):
                await c.read(ns, ns.size - 10, 11)
            cqe, _ = await c.io[0].submit(w.read_cmd(1, ns.nsze, 1, 4096))
            return cqe.status
        finally:
            await c.close()

    status = asyncio.run(run())
    assert status & 0x7FF == w.status.LBA_RANGE and "LBA out of range" in w.status_message(status)


def test_target_demanding_authentication_fails_clearly_without_hanging(volume):
    with ThreadedTarget(target_config(volume, require_auth=True)) as t:
        with pytest.raises(w.NvmeStatusError, match=re.escape(AUTH_MESSAGE)):
            with NvmeTcpClient(params(t, timeout=5)):
                pass


def test_keep_alive_keeps_an_idle_controller_connected(volume):
    async def run(port):
        c = await Controller.connect(ConnectParams("127.0.0.1", port, SUBNQN, HOSTNQN, kato_ms=100))
        try:
            sent = []
            orig = c.admin.driver.send
            c.admin.driver.send = lambda pdu: (sent.append(pdu), orig(pdu))[1]
            for _ in range(200):  # bounded wait for two keep-alives (period kato/2 = 50 ms)
                if sum(isinstance(p, w.CapsuleCmd) and p.sqe.opcode == w.Opcode.KEEP_ALIVE for p in sent) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert c.admin.alive
            return sum(isinstance(p, w.CapsuleCmd) and p.sqe.opcode == w.Opcode.KEEP_ALIVE for p in sent)
        finally:
            await c.close()

    with ThreadedTarget(target_config(volume)) as t:
        assert asyncio.run(run(t.port)) >= 2


def test_orderly_shutdown_reaches_shst_complete(target):
    async def run():
        c = await Controller.connect(params(target))
        cntlid = c.cntlid
        await c.close()
        return cntlid, c.shutdown_status

    cntlid, shst = asyncio.run(run())
    assert shst == 2  # CC.SHN was honoured: CSTS.SHST = shutdown complete
    for _ in range(100):  # the target drops the controller once the admin queue closes
        if cntlid not in target.target.controllers.ctrls:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert cntlid not in target.target.controllers.ctrls


def test_two_volumes_two_namespaces(tmp_path):
    from pifarm.target.userspace import NamespaceExport, SubsystemExport, TargetConfig

    a, b = make_volume(tmp_path / "a", "alpha", 1, (10,)), make_volume(tmp_path / "b", "beta", 2, (20000,))
    sub = SubsystemExport(SUBNQN, (NamespaceExport.from_volume(1, a.path), NamespaceExport.from_volume(7, b.path)),
                          frozenset({HOSTNQN}))
    with ThreadedTarget(TargetConfig((sub,), port=0)) as t, NvmeTcpClient(params(t)) as c:
        found = {ns.nsid: ns.uuid for ns in c.namespaces()}
        assert found == {1: namespace_uuid(a.manifest.digest), 7: namespace_uuid(b.manifest.digest)}
        assert c.find_namespace(namespace_uuid(b.manifest.digest)).nsid == 7


def test_node_chain_installs_a_whole_model_through_the_userspace_source(volume, tmp_path):
    """The node's own chain (by kind name) and the node's host identity file, no options."""
    from pifarm.initiator.chain import build_sources, close_all
    from pifarm.initiator.identity import ensure_identity
    from pifarm.target.userspace import NamespaceExport, SubsystemExport, TargetConfig

    ident = ensure_identity(tmp_path / "nvme")
    sub = SubsystemExport(SUBNQN, (NamespaceExport.from_volume(1, volume.path),), frozenset({ident.hostnqn}))
    with ThreadedTarget(TargetConfig((sub,), port=0)) as t:
        ctx = SourceContext(trusted=TrustedKeys(), host_identity_path=tmp_path / "nvme" / "hostnqn")
        sources = build_sources([SourceSpec("nvme-tcp-userspace", address=f"127.0.0.1:{t.port}")], ctx)
        try:
            results = Cache(tmp_path / "cache").install_files(volume.manifest, sources)
        finally:
            close_all(sources)
    assert {r.source for r in results.values()} == {"nvme-tcp-userspace"}
    for f in volume.manifest.files:
        assert results[f.path].path.read_bytes() == volume.blobs[f.digest]


def test_a_cancelled_read_leaves_the_queue_usable(target, volume):
    """Late answers to abandoned commands are absorbed, not treated as protocol errors."""
    async def run():
        c = await Controller.connect(params(target, queue_depth=4))
        try:
            ns = await c.namespace(1)
            mine = bytearray(3 * 2**20)
            task = asyncio.create_task(c.read_into(ns, 0, memoryview(mine)))
            for _ in range(100):  # until some Reads are on the wire
                await asyncio.sleep(0)
                if c.io[0]._pending:
                    break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            snapshot = bytes(mine)
            data = await c.read(ns, 8192, 100000)
            assert c.io[0].alive and not c.io[0]._pending
            assert bytes(mine) == snapshot  # abandoned commands no longer write into the caller's buffer
            return data
        finally:
            await c.close()

    assert asyncio.run(run()) == volume.path.read_bytes()[8192:108192]


def test_source_notices_a_namespace_that_now_holds_another_volume(tmp_path):
    """nsid 1 is retired and reused for a new version: the stale index must not be trusted."""
    from pifarm.target.userspace import NamespaceExport, SubsystemExport, TargetConfig

    a, b = make_volume(tmp_path / "a", "alpha", 1, (5000,)), make_volume(tmp_path / "b", "alpha", 2, (7000,))
    cfg = TargetConfig((SubsystemExport(SUBNQN, (NamespaceExport.from_volume(1, a.path),), frozenset({HOSTNQN})),),
                       port=0)
    with ThreadedTarget(cfg) as t:
        spec = SourceSpec("nvme-tcp-userspace", address=f"127.0.0.1:{t.port}",
                          options={"subnqn": SUBNQN, "hostnqn": HOSTNQN})
        src = make_source(spec, SourceContext(trusted=TrustedKeys()))
        try:
            fa, fb = a.manifest.files[0], b.manifest.files[0]
            assert b"".join(src.chunks(fa.ref)) == a.blobs[fa.digest]
            swapped = TargetConfig((SubsystemExport(SUBNQN, (NamespaceExport.from_volume(1, b.path),),
                                                    frozenset({HOSTNQN})),), port=0)
            t.loop.call_soon_threadsafe(t.target.set_config, swapped)
            assert b"".join(src.chunks(fb.ref)) == b.blobs[fb.digest]
            with pytest.raises(SourceError, match="on no volume"):
                list(src.chunks(fa.ref))  # alpha v1 is gone: no bytes from the volume now at nsid 1
        finally:
            src.close()

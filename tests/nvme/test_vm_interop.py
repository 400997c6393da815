"""Interop against peers no one here wrote, in the qemu VM with the real kernel:
1. pifarm's initiator <-> the kernel's nvmet-tcp target;
2. the kernel's nvme-tcp host (nvme-cli) <-> pifarm's userspace target."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.nvme.conftest import HOSTNQN, OTHER_HOST, make_volume
from tests.vm.fixtures import vm_pool  # noqa: F401  (fixture)

pytestmark = pytest.mark.vm
SUBNQN = "nqn.2024-01.io.pifarm:interop"


def _run(vm, cmd: str, vol_name: str, timeout: float = 240, extra: str = "") -> dict:
    """Run one vm_checks program on the volume (copied to the VM's O_DIRECT-capable scratch disk)."""
    r = vm.run(
        f"""
        set -e
        rm -rf "$PIFARM_VM_SCRATCH/vols"; mkdir -p "$PIFARM_VM_SCRATCH/vols"
        cp "$PIFARM_VM_SHARE/{vol_name}" "$PIFARM_VM_SCRATCH/vols/"
        python -m tests.nvme.vm_checks {cmd} --volume "$PIFARM_VM_SCRATCH/vols/{vol_name}" \
            --subnqn {SUBNQN} --hostnqn {HOSTNQN} --other-host {OTHER_HOST} {extra}
        rm -rf "$PIFARM_VM_SCRATCH/vols"
        """,
        timeout=timeout,
    )
    assert r.rc == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


@pytest.fixture
def vm_volume(vm_pool, tmp_path):
    vm = vm_pool.get("bookworm")
    vol = make_volume(tmp_path, "interop", 1, (3 * 2**20 + 17, 4096, 123457))
    shutil.copy(vol.path, vm.share / vol.path.name)
    yield vm, vol
    (vm.share / vol.path.name).unlink(missing_ok=True)


def test_pifarm_initiator_against_kernel_nvmet(vm_volume):
    from pifarm.signed.manifest import namespace_nguid, namespace_uuid

    vm, vol = vm_volume
    out = _run(vm, "initiator-vs-kernel", vol.path.name)
    digest = vol.manifest.digest
    assert out["manifest_digest"] == digest
    assert out["discovered"] == [SUBNQN]
    for hd in ("digests_False", "digests_True"):
        r = out[hd]
        assert r["uuid"] == str(namespace_uuid(digest)), r
        assert r["nguid"] == namespace_nguid(digest).hex(), r
        assert r["verified_blobs"] == len(vol.manifest.files)
        assert r["whole_volume_equal"] is True
        assert r["model"] == "Linux"
    assert out["refused_status"] == 0x4184
    assert "host NQN is not allowed" in out["refused"]


def test_kernel_host_against_pifarm_userspace_target(vm_volume):
    from pifarm.signed.manifest import namespace_uuid

    vm, vol = vm_volume
    late = make_volume(vol.path.parent.parent / "late", "interop", 2, (8192,))
    shutil.copy(late.path, vm.share / late.path.name)
    try:
        out = _run(vm, "kernel-vs-userspace", vol.path.name,
                   extra=f'--late-volume "$PIFARM_VM_SHARE/{late.path.name}"')
    finally:
        (vm.share / late.path.name).unlink(missing_ok=True)
    # a version published while the kernel host was connected appeared without reconnecting
    assert out["plain"]["late_uuid"] == str(namespace_uuid(late.manifest.digest)), out
    assert out["discover_rc"] == 0, out
    assert SUBNQN in out["discover"]
    for key in ("plain", "digests"):
        r = out[key]
        assert r["connect_rc"] == 0, (r, out["dmesg"])
        assert r["uuid"] == str(namespace_uuid(vol.manifest.digest)), r
        assert r["dd_rc"] == 0 and r["dd_equal"] is True, r
        assert r["write_rc"] != 0, r  # read-only: the write never lands
        assert r["ro"] == "1"
        assert r["passthru_write_rc"] != 0 and "write protect" in r["passthru_write_out"].lower(), r
    assert out["refused_rc"] != 0, out


def test_pifarm_initiator_does_dh_hmac_chap_with_the_kernel_target(vm_pool, tmp_path):
    from pifarm.initiator.nvme_tcp import AUTH_MESSAGE
    from pifarm.signed.manifest import namespace_uuid

    vm = vm_pool.get("trixie")  # 6.12: the kernel target can demand DH-HMAC-CHAP
    vol = make_volume(tmp_path, "auth", 1, (300000,))
    shutil.copy(vol.path, vm.share / vol.path.name)
    try:
        out = _run(vm, "initiator-vs-auth", vol.path.name, timeout=180)
    finally:
        (vm.share / vol.path.name).unlink(missing_ok=True)
    assert out["key_prefix"].startswith("DHHC-1:"), out
    assert AUTH_MESSAGE in out["none"]["error"], out  # no secret: one clear sentence, no hang
    right = out["right"]
    assert right == {"uuid": str(namespace_uuid(vol.manifest.digest)), "equal": True, "queues": 2}, out
    assert "refused DH-HMAC-CHAP" in out["wrong"]["error"] or "authentication" in out["wrong"]["error"], out

"""The vm harness itself: what every vm-tier test relies on (kernel, modules, chroot, isolation)."""

from __future__ import annotations

import uuid

import pytest

from tests.vm.fixtures import KERNEL_PARAMS, vm_pool  # noqa: F401  (fixture)
from tests.vm.harness import PROJECT

pytestmark = pytest.mark.vm

EXPECT_RELEASE = {"bookworm": "6.1.", "trixie": "6.12."}


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_guest_has_real_nvmet_nvme_tcp_and_the_project_venv(vm_pool, kernel):
    r = vm_pool.run(
        """
        set -e
        uname -r
        pwd
        echo "probe=$PROBE"
        lsmod | awk '{print $1}' | grep -x -e nvmet_tcp -e nvme_tcp -e nvmet | sort | tr '\\n' ' '; echo
        cd /sys/kernel/config/nvmet && ls -d hosts ports subsystems && cd - >/dev/null
        ip -o link show lo | grep -q 'UP' && echo lo-up
        test -c /dev/nvme-fabrics && echo fabrics-dev
        nvme version | head -1
        python -c 'import pifarm, sys; print("venv", sys.prefix)'
        H=/sys/kernel/config/nvmet/hosts/nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)
        mkdir "$H"; ls "$H" | tr '\\n' ' '; echo "|hostattrs"
        """,
        kernel=kernel,
        env={"PROBE": "it's \"quoted\" $HOME"},
    )
    assert r.rc == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(EXPECT_RELEASE[kernel]), r.output
    assert lines[1] == str(PROJECT)
    assert lines[2] == "probe=it's \"quoted\" $HOME"
    assert lines[3].split() == ["nvme_tcp", "nvmet", "nvmet_tcp"]
    assert lines[4:7] == ["hosts", "ports", "subsystems"]
    assert "lo-up" in lines and "fabrics-dev" in lines
    assert any(ln.startswith("nvme version 2.") for ln in lines)
    assert f"venv {PROJECT / '.venv'}" in lines or any(ln.startswith("venv /") for ln in lines)
    host_attrs = next(ln for ln in lines if ln.endswith("|hostattrs"))
    # DH-HMAC-CHAP exists only in trixie's kernel: the reason auth tests run there
    assert ("dhchap_key" in host_attrs) == (kernel == "trixie"), host_attrs


def test_guest_root_is_writable_but_the_host_is_untouched_and_the_share_is_two_way(vm_pool):
    vm = vm_pool.get("bookworm")
    probe = f".vm-probe-{uuid.uuid4().hex}"
    (vm.share / "in.txt").write_text("from host\n")
    r = vm.run(
        f"""
        set -e
        echo written-in-vm > {probe}
        cat {probe}
        cat "$PIFARM_VM_SHARE/in.txt"
        echo from-vm > "$PIFARM_VM_SHARE/out.txt"
        mountpoint -q "$PIFARM_VM_SCRATCH" && touch "$PIFARM_VM_SCRATCH/x" && echo scratch-ok
        """
    )
    assert r.rc == 0, r.output
    assert r.output.split() == ["written-in-vm", "from", "host", "scratch-ok"]
    assert not (PROJECT / probe).exists(), "a write inside the VM leaked into the host's tree"
    assert (vm.share / "out.txt").read_text() == "from-vm\n"


def test_each_script_starts_from_a_clean_kernel_state(vm_pool):
    vm = vm_pool.get("bookworm")
    first = vm.run(
        """
        set -e
        C=/sys/kernel/config/nvmet
        truncate -s 8M "$PIFARM_VM_SCRATCH/left.img"
        mkdir $C/subsystems/nqn.2024-01.io.pifarm:left
        mkdir $C/subsystems/nqn.2024-01.io.pifarm:left/namespaces/1
        echo -n "$PIFARM_VM_SCRATCH/left.img" > $C/subsystems/nqn.2024-01.io.pifarm:left/namespaces/1/device_path
        echo 1 > $C/subsystems/nqn.2024-01.io.pifarm:left/namespaces/1/enable
        mkdir $C/ports/7 $C/hosts/nqn.2024-01.io.pifarm:h
        ln -s $C/hosts/nqn.2024-01.io.pifarm:h $C/subsystems/nqn.2024-01.io.pifarm:left/allowed_hosts/
        echo tcp > $C/ports/7/addr_trtype; echo ipv4 > $C/ports/7/addr_adrfam
        echo 127.0.0.1 > $C/ports/7/addr_traddr; echo 4420 > $C/ports/7/addr_trsvcid
        ln -s $C/subsystems/nqn.2024-01.io.pifarm:left $C/ports/7/subsystems/
        setsid sleep 1000 </dev/null >/dev/null 2>&1 &
        echo left-behind
        """
    )
    assert first.rc == 0, first.output
    second = vm.run(
        """
        C=/sys/kernel/config/nvmet
        echo "subsystems=$(ls $C/subsystems | wc -l) ports=$(ls $C/ports | wc -l) hosts=$(ls $C/hosts | wc -l)"
        echo "sleepers=$(pgrep -c -x sleep)"
        """
    )
    assert second.rc == 0, second.output
    assert second.output.split() == ["subsystems=0", "ports=0", "hosts=0", "sleepers=0"]


def test_exit_codes_and_timeouts_come_back_and_the_vm_survives_a_timeout(vm_pool):
    vm = vm_pool.get("bookworm")
    assert vm.run("echo partial; exit 7").rc == 7
    boots = vm.boots
    slow = vm.run("echo started; sleep 60; echo never", timeout=3)
    assert slow.rc == 124, slow.output
    assert "started" in slow.output and "never" not in slow.output
    assert vm.run("echo alive").output.strip() == "alive"
    assert vm.boots == boots, "a script timeout must not cost a reboot"

"""The vm tier: boot Debian's stock kernel in qemu (TCG) and run scripts as root against it.

    from tests.vm.harness import Vm, run_in_vm, vm_available

    ok, why = vm_available()
    r = run_in_vm("cat /sys/kernel/config/nvmet/ports/ | wc -l", kernel="trixie")
    assert r.rc == 0, r.output

    with Vm("bookworm") as vm:          # one boot (~10 s of TCG), many scripts
        vm.run("nvme list").check()
        vm.run("python -c 'import pifarm'", env={"X": "1"}).check()

Inside the VM every script runs in bash, as root, chrooted into the host's `/` (read-only over
9p, made writable by a tmpfs overlay that is thrown away with the VM), with cwd = the project
root, the project's venv first on PATH (`python`, `pifarm`), nvme-cli on PATH, the real configfs
at /sys/kernel/config, modules nvmet nvmet-tcp nvme-tcp loaded and lo up. Before each script
the kernel state is reset (processes killed, NVMe controllers deleted, nvmet configfs emptied).

Shared directories (same path on both sides):
  vm.share           writable by both, uncached: hand files in, get results out
  $PIFARM_VM_SCRATCH a fresh ext4 disk (O_DIRECT works: put nvmet backing files here)
  $PIFARM_VM_SHARE   = vm.share, for scripts

Python in the guest imports over 9p under TCG: a few seconds per process, so do many checks per
script. Running pytest inside the guest, set PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 (and `-p` the
plugins you need): autoloading hypothesis/schemathesis costs ~100 s there.

Pytest: use the `vm_pool` fixture (tests/vm/fixtures.py) so one pytest session boots each
kernel once, however many test modules use it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from tests.vm import images

Kernel = Literal["bookworm", "trixie"]
KERNELS: tuple[str, ...] = ("bookworm", "trixie")
PROJECT = Path(__file__).resolve().parents[2]
SCRATCH = "/scratch"
BOOT_TIMEOUT = 180.0  # TCG boot is ~5 s; the margin is for a loaded 2-core CI box
POLL = 0.05
BOOT_ATTEMPTS = 3


class _BootCrash(Exception):
    """The guest died before it was ready (retried by Vm.start)."""


class VmError(RuntimeError):
    """The VM itself failed (could not be prepared, did not boot, died, or a script overran);
    distinct from a script that ran and exited non-zero (see VmResult.rc)."""


@dataclass(frozen=True)
class VmResult:
    rc: int
    output: str
    seconds: float = 0.0
    kernel: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "VmResult":
        """Raise AssertionError carrying the script's output unless it exited 0."""
        if self.rc != 0:
            raise AssertionError(f"script in VM ({self.kernel}) exited {self.rc}:\n{self.output}")
        return self


def vm_available() -> tuple[bool, str]:
    """(True, "") when this host can boot the vm tier, else (False, reason). Cheap: no downloads."""
    problem = images.host_problem()
    if problem:
        return False, problem
    if not os.access(sys.executable, os.X_OK):
        return False, f"{sys.executable} is not executable"
    return True, ""


@dataclass
class Vm:
    """One booted VM. Scripts run one after another; a script that overruns its timeout kills the
    VM (the next `run` boots a fresh one), so no call can hang past its bound. qemu dies with the
    thread that started it (PR_SET_PDEATHSIG): start VMs from a thread that outlives their use."""

    kernel: str = "bookworm"
    memory_mb: int = 1536
    scratch_mb: int = 1024
    boot_timeout: float = BOOT_TIMEOUT
    share_parent: str | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)
    _n: int = field(default=0, init=False, repr=False)
    _nvme_dir: Path | None = field(default=None, init=False, repr=False)
    release: str = field(default="", init=False)
    boots: int = field(default=0, init=False)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Vm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def share(self) -> Path:
        if self._dir is None:
            raise VmError("VM not started")
        return self._dir / "results" / "share"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        if self.kernel not in KERNELS:
            raise VmError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        ok, why = vm_available()
        if not ok:
            raise VmError(f"vm tier unavailable: {why}")
        try:
            k = images.prepare_kernel(self.kernel)
            u = images.prepare_userspace()
            initrd = images.build_initramfs(k, u)
        except images.ImageError as e:
            raise VmError(f"cannot prepare the {self.kernel} VM: {e}") from e
        self._nvme_dir = u.nvme_bin_dir
        # A stock kernel under multi-threaded TCG can, rarely, oops while it patches its own text
        # at boot (seen on 6.12: "Fatal exception in interrupt" in a patched site). That is the
        # emulator, not the code under test: a guest that dies before it is ready is booted again.
        crashes = []
        for _attempt in range(BOOT_ATTEMPTS):
            try:
                self._boot(k.vmlinux, initrd)
                return
            except _BootCrash as e:
                crashes.append(str(e))
                self.close()
        raise VmError(f"{self.kernel} VM crashed while booting {BOOT_ATTEMPTS} times; last: {crashes[-1]}")

    def _boot(self, vmlinux: Path, initrd: Path) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=f"pifarm-vm-{self.kernel}-", dir=self.share_parent))
        d = self._dir
        (d / "results" / "share").mkdir(parents=True)
        (d / "results" / "session.env").write_text(
            f"RESULTS={shlex.quote(str(d / 'results'))}\nSCRATCH={SCRATCH}\n"
        )
        scratch = d / "scratch.img"
        with open(scratch, "wb") as f:
            f.truncate(self.scratch_mb << 20)
        images._run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(scratch)],
                    what="mkfs.ext4 scratch", timeout=120)
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(self.memory_mb), "-smp", "2", "-nographic", "-no-reboot", "-nodefaults",
            "-serial", f"file:{d / 'serial.log'}", "-monitor", "none",
            "-kernel", str(vmlinux), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-drive", f"file={scratch},if=virtio,format=raw,cache=unsafe",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={d / 'results'},mount_tag=results,security_model=none",
            "-nic", "none",
        ]
        t0 = time.monotonic()
        with open(d / "qemu.log", "wb") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=_die_with_parent)
        self._n = 0
        self.boots += 1
        ready = d / "results" / "ready"
        try:
            while not ready.exists():
                if self._proc.poll() is not None:
                    fatal = d / "results" / "fatal"
                    if fatal.exists():  # our init gave up (a missing module, no 9p): not a crash
                        raise VmError(f"{self.kernel} VM init failed: {self._tail()}")
                    raise _BootCrash(f"qemu rc {self._proc.returncode}: {self._tail(600)}")
                if time.monotonic() - t0 > self.boot_timeout:
                    raise VmError(f"{self.kernel} VM did not come up within {self.boot_timeout:.0f}s: {self._tail()}")
                time.sleep(POLL)
            self.release = ready.read_text().split()[-1]
        except BaseException:
            self._kill()  # never leave a VM behind a failed start (it would poll its share forever)
            raise

    def close(self) -> None:
        """Power the VM off (bounded), then remove its files."""
        if self._proc is not None:
            if self._proc.poll() is None and self._dir is not None:
                (self._dir / "results" / "stop").write_text("")
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._kill()
            self._proc = None
        if self._dir is not None and not os.environ.get("PIFARM_VM_KEEP"):
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)

    def _tail(self, n: int = 1500) -> str:
        parts = []
        for name in ("results/fatal", "serial.log", "qemu.log"):
            p = self._dir / name if self._dir else None
            if p and p.exists():
                text = p.read_text(errors="replace").replace("\r", "").strip()
                if text:
                    parts.append(f"[{name}] {text[-n:]}")
        return " | ".join(parts) or "no output"

    def _check_alive(self, when: str) -> None:
        if self._proc is None or self._proc.poll() is not None:
            rc = self._proc.returncode if self._proc else None
            raise VmError(f"{self.kernel} VM exited (qemu rc {rc}) {when}: {self._tail()}")

    # ------------------------------------------------------------------ scripts
    def run(self, script: str, *, timeout: float = 300, env: Mapping[str, str] | None = None) -> VmResult:
        """Run `script` (bash) as root in the VM; return its exit code and combined output."""
        if not self.alive:
            if self._dir is not None:
                self.close()
            self.start()
        assert self._dir is not None
        n = self._n
        q = self._dir / "results" / "q"
        (q / f"{n}.user.sh").write_text(script)
        venv_bin = Path(sys.executable).parent
        base = {
            "PATH": f"{venv_bin}:{self._nvme_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": str(venv_bin.parent),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PIFARM_VM": "1",
            "PIFARM_VM_KERNEL": self.kernel,
            "PIFARM_VM_SCRATCH": SCRATCH,
            "PIFARM_VM_SHARE": str(self.share),
        }
        base.update(env or {})
        assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in base.items())
        # coreutils timeout signals the script's whole process group; the host-side bound below
        # covers anything that escapes it (the VM is killed).
        wrapper = (
            f"exec /usr/bin/env -i {assigns} /usr/bin/timeout -k 5 {int(timeout)} "
            f"/bin/bash -c 'cd \"$0\" && exec /bin/bash \"$1\"' {shlex.quote(str(PROJECT))} "
            f"{shlex.quote(str(q / f'{n}.user.sh'))}\n"
        )
        tmp = q / f".{n}.sh"
        tmp.write_text(wrapper)
        os.replace(tmp, q / f"{n}.sh")  # the VM must never see a half-written script
        self._n += 1
        t0 = time.monotonic()
        rc_file = q / f"{n}.rc"
        while not rc_file.exists():
            if not self.alive:
                raise VmError(f"{self.kernel} VM died during a script: {self._output(q, n)[-1500:]} {self._tail()}")
            if time.monotonic() - t0 > timeout + 30:
                self._kill()
                raise VmError(f"script overran {timeout:.0f}s in the {self.kernel} VM; VM killed. "
                              f"Output so far:\n{self._output(q, n)[-3000:]}")
            time.sleep(POLL)
        seconds = time.monotonic() - t0
        rc = int(rc_file.read_text().strip() or "-1")
        out = self._output(q, n)
        if rc in (124, 137):
            out += f"\n[vm harness: script timed out after {timeout:.0f}s]"
        return VmResult(rc, out, seconds, self.kernel)

    @staticmethod
    def _output(q: Path, n: int) -> str:
        p = q / f"{n}.out"
        return p.read_text(errors="replace") if p.exists() else ""


def _die_with_parent() -> None:
    """In the qemu child: SIGKILL it when the harness process dies (a killed pytest must not
    leave VMs running). Linux prctl(PR_SET_PDEATHSIG); a no-op elsewhere."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_in_vm(script: str, *, kernel: Kernel = "bookworm", timeout: float = 300,
              env: Mapping[str, str] | None = None) -> VmResult:
    """Boot a VM, run one script, power off. Prefer `Vm` (or the `vm_pool` fixture) for several."""
    with Vm(kernel) as vm:
        return vm.run(script, timeout=timeout, env=env)

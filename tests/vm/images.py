"""Build what the vm tier boots: Debian's stock kernels, nvme-cli, busybox and an initramfs.

Everything comes from Debian's archive through `apt-get download` with a private apt
configuration per suite (the system's apt state is never touched), and is cached under
`~/.cache/pifarm/vm` (or `$PIFARM_VM_CACHE`) keyed by package version:

    apt/<suite>/             sources.list, lists/, cache/: the private apt state
    debs/<suite>/            downloaded .deb files (their names carry the version)
    resolved-<suite>.json    {package: version} chosen at the last successful apt-get update
    kernel/<pkg>_<ver>/      vmlinux (ELF, booted via PVH), modules/*.ko, modules.order
    user/<nvme-cli ver>/     nvme-cli + the libraries the host lacks, with a `bin/nvme` wrapper
    initramfs/<key>.cpio     busybox + modules + init.sh; key = hash of everything inside

A file lock serialises preparation, so concurrent test runs share one download.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 7 * 86400  # re-resolve versions weekly; a vanished .deb also forces it
APT_TIMEOUT = 600

# Kernels the tier boots. bookworm: 6.1 (nvmet, nvme-tcp; no DH-HMAC-CHAP). trixie: 6.12 with
# NVME_AUTH/NVME_TARGET_AUTH (DH-HMAC-CHAP). Userspace always comes from bookworm: its nvme-cli 2.3
# runs against both kernels and its libraries match the host the chroot runs on.
SUITES = {"bookworm": "bookworm", "trixie": "trixie"}
USER_SUITE = "bookworm"
USER_PKGS = ("busybox-static", "nvme-cli", "libnvme1", "libjson-c5", "libkeyutils1")
MODULES = (
    "configfs", "nvmet", "nvmet-tcp", "nvme-core", "nvme-fabrics", "nvme-tcp", "crc32c_generic",
    "virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay", "ext4",
)
OPTIONAL_MODULES = ("nvme-auth", "nvme-keyring", "crc32c_generic")


class ImageError(RuntimeError):
    """The vm tier could not prepare a kernel or initramfs; the message says what to fix."""


def cache_root() -> Path:
    env = os.environ.get("PIFARM_VM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pifarm" / "vm"


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = APT_TIMEOUT, what: str = "") -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise ImageError(f"{what or cmd[0]}: {cmd[0]} is not installed (run make system-deps)") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"{what or cmd[0]}: no answer after {timeout:.0f}s") from e
    if p.returncode != 0:
        err = " ".join((p.stderr or p.stdout).split())[-400:]
        raise ImageError(f"{what or ' '.join(cmd[:3])} failed (rc {p.returncode}): {err}")
    return p.stdout


def _tool(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/sbin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if not found:
        raise ImageError(f"{name} is not installed (run make system-deps as root)")
    return found


@contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (or $PIFARM_VM_MIRROR)."""
    env = os.environ.get("PIFARM_VM_MIRROR")
    if env:
        return env.rstrip("/")
    candidates: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in f.read_text(errors="replace").split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if uris and "security" not in uris.group(1):
                candidates.append(uris.group(1))
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if f.exists():
            for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", f.read_text(errors="replace"), re.M):
                if "security" not in m.group(1):
                    candidates.append(m.group(1))
    for c in candidates:
        if "debian" in c:
            return c.rstrip("/")
    raise ImageError("no Debian mirror found in /etc/apt; set PIFARM_VM_MIRROR to a Debian archive URL")


class Apt:
    """apt-get/apt-cache against one suite with private state: no change to the system's apt."""

    def __init__(self, root: Path, suite: str):
        self.suite = suite
        self.dir = root / "apt" / suite
        self.debs = root / "debs" / suite
        self.resolved_file = root / f"resolved-{suite}.json"

    def _opts(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::sourcelist={self.dir / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "Dir::Etc::preferencesparts=-",
            "-o", f"Dir::State::Lists={self.dir / 'lists'}",
            "-o", f"Dir::Cache={self.dir / 'cache'}",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Architectures::=amd64",
            "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "Debug::NoLocking=0",
        ]

    def update(self) -> None:
        if not Path(KEYRING).exists():
            raise ImageError(f"{KEYRING} missing: apt-get install debian-archive-keyring")
        (self.dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.dir / "sources.list").write_text(
            f"deb [signed-by={KEYRING} arch=amd64] {debian_mirror()} {self.suite} main\n"
        )
        _run(["apt-get", *self._opts(), "-qq", "update"], what=f"apt-get update ({self.suite})")

    def version(self, pkg: str) -> str:
        out = _run(["apt-cache", *self._opts(), "show", "--no-all-versions", pkg], what=f"apt-cache show {pkg}")
        m = re.search(r"^Version:\s*(\S+)", out, re.M)
        if not m:
            raise ImageError(f"{self.suite} has no package {pkg}")
        return m.group(1)

    def kernel_package(self) -> str:
        out = _run(["apt-cache", *self._opts(), "depends", "linux-image-amd64"], what="apt-cache depends linux-image-amd64")
        m = re.search(r"Depends:\s*(linux-image-\d\S*-amd64)\b", out)
        if not m:
            raise ImageError(f"cannot resolve linux-image-amd64 in {self.suite}: {out.strip()[:200]}")
        return m.group(1)

    def deb_path(self, pkg: str, version: str) -> Path | None:
        ver = version.split(":", 1)[-1]
        hits = [p for p in self.debs.glob(f"{pkg}_*.deb") if p.name.split("_")[1].replace("%3a", ":").split(":", 1)[-1] == ver]
        return hits[0] if hits else None

    def download(self, pkg: str, version: str) -> Path:
        have = self.deb_path(pkg, version)
        if have:
            return have
        self.debs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.debs) as tmp:
            _run(["apt-get", *self._opts(), "-qq", "download", f"{pkg}={version}"], cwd=Path(tmp),
                 what=f"apt-get download {pkg}={version} ({self.suite})")
            got = list(Path(tmp).glob("*.deb"))
            if len(got) != 1:
                raise ImageError(f"apt-get download {pkg} produced {len(got)} files")
            dest = self.debs / got[0].name
            os.replace(got[0], dest)
        return dest

    def resolve(self, packages: list[str], kernel: bool) -> dict[str, str]:
        """{package: version} for `packages` (+ the kernel image when `kernel`), downloading each
        .deb once. Reuses the last resolution while it is fresh and complete; re-resolves when a
        .deb is missing; falls back to the cached set when the archive cannot be reached."""
        old: dict[str, str] = {}
        if self.resolved_file.exists():
            old = json.loads(self.resolved_file.read_text())
            fresh = time.time() - self.resolved_file.stat().st_mtime < LISTS_MAX_AGE
            wanted = set(packages) | ({"<kernel>"} if kernel else set())
            if fresh and wanted <= set(old) and all(self.deb_path(p, v) for p, v in old.items() if p != "<kernel>"):
                return old
        try:
            self.update()
            res = {p: self.version(p) for p in packages}
            if kernel:
                kp = self.kernel_package()
                res["<kernel>"] = kp
                res[kp] = self.version(kp)
            for p, v in res.items():
                if p != "<kernel>":
                    self.download(p, v)
        except ImageError as e:
            usable = old and all(self.deb_path(p, v) for p, v in old.items() if p != "<kernel>")
            if not usable:
                raise
            print(f"vm tier: {e}; using the cached {self.suite} packages")
            return old
        self.resolved_file.write_text(json.dumps(res, indent=1, sort_keys=True))
        return res


@dataclass(frozen=True)
class KernelImage:
    suite: str
    release: str  # uname -r
    vmlinux: Path
    modules_dir: Path
    modules: tuple[str, ...]  # insmod order
    key: str


@dataclass(frozen=True)
class Userspace:
    root: Path
    nvme_bin_dir: Path  # holds the `nvme` wrapper; put it on PATH
    busybox: Path
    key: str


def _extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run([_tool("dpkg-deb"), "-x", str(deb), str(dest)], what=f"dpkg-deb -x {deb.name}")


def _decompress_vmlinuz(vmlinuz: Path, out: Path) -> None:
    """Cut the ELF vmlinux out of a bzImage: PVH boots it directly, skipping the in-guest
    decompression that costs seconds under TCG. bookworm is xz, trixie zstd."""
    data = vmlinuz.read_bytes()
    xz, zs = data.find(b"\xfd7zXZ\x00"), data.find(b"\x28\xb5\x2f\xfd")
    if xz >= 0 and (zs < 0 or xz < zs):
        raw = lzma.LZMADecompressor().decompress(data[xz:])
    elif zs >= 0:
        p = subprocess.run([_tool("zstd"), "-qdc"], input=data[zs:], capture_output=True, timeout=120)
        raw = p.stdout  # trailing bytes after the frame make zstd exit 1 after a complete output
    else:
        raise ImageError(f"{vmlinuz}: neither xz nor zstd payload found")
    if raw[:4] != b"\x7fELF":
        raise ImageError(f"{vmlinuz}: decompressed payload is not an ELF vmlinux")
    out.write_bytes(raw)


def _decompress_module(src: Path, dest: Path) -> None:
    if src.suffix == ".xz":
        dest.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.suffix == ".zst":
        dest.write_bytes(subprocess.run([_tool("zstd"), "-qdc", str(src)], capture_output=True, check=True).stdout)
    else:
        shutil.copyfile(src, dest)


def prepare_kernel(suite: str, root: Path | None = None) -> KernelImage:
    if suite not in SUITES:
        raise ImageError(f"unknown kernel {suite!r}; choose one of {', '.join(SUITES)}")
    root = root or cache_root()
    with _locked(root):
        apt = Apt(root, SUITES[suite])
        res = apt.resolve([], kernel=True)
        kpkg = res["<kernel>"]
        kdir = root / "kernel" / f"{kpkg}_{res[kpkg]}"
        meta = kdir / "kernel.json"
        if not meta.exists():
            _build_kernel(apt.deb_path(kpkg, res[kpkg]), kdir)
        d = json.loads(meta.read_text())
        return KernelImage(suite, d["release"], kdir / "vmlinux", kdir / "modules", tuple(d["modules"]),
                           f"{kpkg}_{res[kpkg]}")


def _build_kernel(deb: Path | None, kdir: Path) -> None:
    if deb is None:
        raise ImageError("kernel .deb vanished from the cache; delete resolved-*.json and retry")
    shutil.rmtree(kdir, ignore_errors=True)
    work = kdir.with_name(kdir.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    x = work / "x"
    _extract(deb, x)
    mods_base = x / "usr" / "lib" / "modules" if (x / "usr" / "lib" / "modules").is_dir() else x / "lib" / "modules"
    if not (x / "lib" / "modules").exists():  # merged-/usr (trixie): bookworm's modprobe -d wants ROOT/lib/modules
        (x / "lib").mkdir(exist_ok=True)
        (x / "lib" / "modules").symlink_to("../usr/lib/modules")
    release = sorted(p.name for p in mods_base.iterdir())[0]
    _run([_tool("depmod"), "-b", str(x), release], what="depmod")  # the .deb ships no modules.dep
    order: list[str] = []
    mods = work / "modules"
    mods.mkdir()
    for m in MODULES + OPTIONAL_MODULES:
        p = subprocess.run([_tool("modprobe"), "-d", str(x), "-S", release, "--show-depends", m],
                           capture_output=True, text=True)
        if p.returncode != 0:
            if m in OPTIONAL_MODULES:
                continue
            raise ImageError(f"kernel {release} has no module {m}: {p.stderr.strip()}")
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] != "insmod":
                continue  # "builtin X": nothing to load
            src = Path(parts[1])
            name = re.sub(r"\.(xz|zst)$", "", src.name)
            if name not in order:
                _decompress_module(src, mods / name)
                order.append(name)
    _decompress_vmlinuz(x / "boot" / f"vmlinuz-{release}", work / "vmlinux")
    shutil.rmtree(x)
    (work / "kernel.json").write_text(json.dumps({"release": release, "modules": order, "deb": deb.name}, indent=1))
    os.replace(work, kdir)


def prepare_userspace(root: Path | None = None) -> Userspace:
    root = root or cache_root()
    with _locked(root):
        apt = Apt(root, USER_SUITE)
        res = apt.resolve(list(USER_PKGS), kernel=False)
        key = f"nvme-cli_{res['nvme-cli']}_busybox_{res['busybox-static']}".replace(":", "_")
        udir = root / "user" / key
        if not (udir / ".done").exists():
            shutil.rmtree(udir, ignore_errors=True)
            for p in USER_PKGS:
                _extract(apt.deb_path(p, res[p]), udir / "root")
            _write_nvme_wrapper(udir)
            (udir / ".done").write_text(json.dumps(res, indent=1))
        return Userspace(udir / "root", udir / "bin", udir / "root" / "bin" / "busybox", key)


def _write_nvme_wrapper(udir: Path) -> None:
    """`bin/nvme` runs the downloaded nvme-cli with its libraries, leaving LD_LIBRARY_PATH of
    every other program (the venv's python) alone. The chroot sees this path unchanged."""
    r = udir / "root"
    libdirs = [str(p) for p in (r / "lib" / "x86_64-linux-gnu", r / "usr" / "lib" / "x86_64-linux-gnu") if p.is_dir()]
    nvme = next((p for p in (r / "usr" / "sbin" / "nvme", r / "sbin" / "nvme") if p.exists()), None)
    if nvme is None:
        raise ImageError("nvme-cli package holds no nvme binary")
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs))
    ldd = subprocess.run(["ldd", str(nvme)], capture_output=True, text=True, env=env)
    missing = [ln.split()[0] for ln in ldd.stdout.splitlines() if "not found" in ln]
    if missing:
        raise ImageError(f"nvme-cli needs libraries this host lacks: {', '.join(missing)}")
    (udir / "bin").mkdir(parents=True, exist_ok=True)
    w = udir / "bin" / "nvme"
    w.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{":".join(libdirs)}" exec "{nvme}" "$@"\n')
    w.chmod(0o755)


def build_initramfs(kernel: KernelImage, user: Userspace, root: Path | None = None) -> Path:
    root = root or cache_root()
    init = (HERE / "init.sh").read_bytes()
    h = hashlib.sha256()
    for part in (kernel.key.encode(), user.key.encode(), init, "\n".join(kernel.modules).encode()):
        h.update(part + b"\0")
    out = root / "initramfs" / f"{kernel.suite}-{h.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    with _locked(root), tempfile.TemporaryDirectory(prefix="initramfs-") as tmp:
        if out.exists():
            return out
        t = Path(tmp)
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "lib/modules"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(user.busybox, t / "bin" / "busybox")
        for m in kernel.modules:
            shutil.copy2(kernel.modules_dir / m, t / "lib" / "modules" / m)
        (t / "modules.order").write_text("\n".join(kernel.modules) + "\n")
        (t / "init").write_bytes(init)
        (t / "init").chmod(0o755)
        files = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")
        with open(part, "wb") as f:
            p = subprocess.run([_tool("cpio"), "-o", "-H", "newc", "--quiet"], cwd=t, input="\n".join(files) + "\n",
                               stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
        if p.returncode != 0:
            raise ImageError(f"cpio failed: {p.stderr.strip()}")
        os.replace(part, out)
    return out


def host_problem() -> str | None:
    """Why this host cannot run the vm tier, or None."""
    if platform.machine() not in ("x86_64", "amd64"):
        return f"the vm tier runs the host's x86_64 venv inside an x86_64 guest; this host is {platform.machine()}"
    for t in ("qemu-system-x86_64", "cpio", "zstd", "dpkg-deb", "depmod", "modprobe", "apt-get"):
        try:
            _tool(t)
        except ImageError as e:
            return str(e)
    return None

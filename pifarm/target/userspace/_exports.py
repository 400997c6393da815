"""What the userspace target exports: subsystems holding read-only namespaces backed by volume
files, and the hosts allowed to connect. Plain values; the server never mutates them."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pifarm.errors import NotFound, PifarmError, UsageError
from pifarm.signed.manifest import namespace_nguid, namespace_uuid
from pifarm.volume.format import BLOCK, VolumeReader

LBA_SHIFT = 12  # volumes are 4 KiB aligned; so are the LBAs


@dataclass(frozen=True)
class NamespaceExport:
    nsid: int
    path: Path
    uuid: uuid.UUID
    nguid: bytes
    size: int  # bytes, a multiple of the LBA size

    def __post_init__(self) -> None:
        if not 1 <= self.nsid < 0xFFFFFFFF:
            raise UsageError(f"namespace id {self.nsid} out of range 1..4294967294")
        if self.size <= 0 or self.size % (1 << LBA_SHIFT):
            raise UsageError(f"namespace {self.nsid} ({self.path}): size {self.size} is not a positive multiple of 4096")
        if len(self.nguid) != 16:
            raise UsageError(f"namespace {self.nsid}: NGUID must be 16 bytes")

    @property
    def nlb(self) -> int:
        return self.size >> LBA_SHIFT

    @classmethod
    def from_volume(cls, nsid: int, path: str | os.PathLike) -> "NamespaceExport":
        """Export a pifarm volume: UUID and NGUID come from its manifest digest."""
        with VolumeReader.from_file(path) as r:
            digest = r.manifest_digest
            size = r.superblock.volume_size
        return cls(nsid, Path(path), namespace_uuid(digest), namespace_nguid(digest), size)

    @classmethod
    def from_file(cls, nsid: int, path: str | os.PathLike, ns_uuid: uuid.UUID, nguid: bytes) -> "NamespaceExport":
        """Export any file (rounded down to whole blocks), e.g. for tests and interop."""
        p = Path(path)
        try:
            size = p.stat().st_size // BLOCK * BLOCK
        except FileNotFoundError as e:
            raise NotFound(f"namespace file {p} does not exist") from e
        return cls(nsid, p, ns_uuid, nguid, size)


@dataclass(frozen=True)
class SubsystemExport:
    nqn: str
    namespaces: tuple[NamespaceExport, ...]
    allowed_hosts: frozenset[str] = frozenset()
    allow_any_host: bool = False
    require_auth: bool = False  # announce DH-HMAC-CHAP (we cannot do it; lets initiators prove they refuse cleanly)
    serial: str = ""

    def __post_init__(self) -> None:
        ids = [n.nsid for n in self.namespaces]
        if len(set(ids)) != len(ids):
            raise UsageError(f"subsystem {self.nqn}: a namespace id is used twice")
        if not self.nqn.startswith("nqn.") or len(self.nqn.encode()) > 223:
            raise UsageError(f"subsystem NQN {self.nqn!r} must start with 'nqn.' and be at most 223 bytes")

    def namespace(self, nsid: int) -> NamespaceExport | None:
        for n in self.namespaces:
            if n.nsid == nsid:
                return n
        return None

    def host_allowed(self, hostnqn: str) -> bool:
        return self.allow_any_host or hostnqn in self.allowed_hosts


@dataclass(frozen=True)
class TargetConfig:
    subsystems: tuple[SubsystemExport, ...]
    host: str = "127.0.0.1"
    port: int = 4420
    mdts: int = 8  # 2**8 * 4 KiB = 1 MiB per command
    queue_size: int = 128
    max_io_queues: int = 8
    idle_timeout: float = 300.0  # a queue without keep-alive that says nothing this long is dropped
    kato_grace: float = 5.0  # an admin queue is dropped after kato + this much silence
    # Limits against hosts on the LAN (any host may reach the discovery controller):
    max_connections: int = 64  # queues (TCP connections) at once; more are closed at accept
    max_log_page: int = 64 << 10  # bytes of one Get Log Page (our largest page is a few KiB)
    max_queued: int = 1 << 20  # reply bytes queued on one connection before we stop reading it
    send_timeout: float = 30.0  # a host that reads none of its replies this long is dropped
    firmware: str = "pifarm"
    model: str = "pifarm userspace target"
    serial: str = field(default_factory=lambda: socket.gethostname()[:20])

    def __post_init__(self) -> None:
        if not 1 <= self.mdts <= 12:  # 0 would announce "no limit"
            raise UsageError(f"mdts {self.mdts} out of range 1..12 (8 KiB .. 16 MiB per command)")
        for name in ("max_connections", "max_log_page", "max_queued"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.send_timeout <= 0:
            raise UsageError("send_timeout must be positive")

    @property
    def max_transfer(self) -> int:
        """Bytes one command may move (MDTS, in units of the 4 KiB minimum page size)."""
        return 4096 << self.mdts

    def subsystem(self, nqn: str) -> SubsystemExport | None:
        for s in self.subsystems:
            if s.nqn == nqn:
                return s
        return None


def default_nqn() -> str:
    """The subsystem NQN the aggregator uses when none is configured (derived from the host name)."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname().lower()) or "localhost"
    return f"nqn.2024-01.io.pifarm:{host}"


def scan_volumes(directory: str | os.PathLike) -> list[Path]:
    """Volume files under a directory (recursively), in a stable order."""
    d = Path(directory)
    if not d.is_dir():
        raise NotFound(f"volume directory {d} does not exist")
    out = []
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            try:
                with open(p, "rb") as f:
                    head = f.read(8)
            except OSError:
                continue
            if head == b"PIFARMVL":
                out.append(p)
    return out


class VolumeDirectory:
    """The volumes under a directory as namespaces, rescanned on demand. A volume keeps its nsid
    for the life of the process; new volumes get the next free id, so connected hosts never see
    a namespace change identity under them."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._nsids: dict[tuple[str, uuid.UUID], int] = {}
        self._cache: dict[tuple[str, int, int], NamespaceExport] = {}

    def scan(self) -> tuple[NamespaceExport, ...]:
        if not self.directory.is_dir():
            return ()  # not created yet (nothing published): export nothing until it is
        out = []
        for p in scan_volumes(self.directory):
            try:
                st = p.stat()
                key = (str(p), st.st_ino, st.st_mtime_ns)
                ns = self._cache.get(key)
                if ns is None:
                    probe = NamespaceExport.from_volume(1, p)
                    if st.st_size < probe.size:
                        continue  # still being written: export it once it is whole
                    nsid = self._nsids.setdefault((str(p), probe.uuid), max(self._nsids.values(), default=0) + 1)
                    ns = self._cache[key] = NamespaceExport(nsid, p, probe.uuid, probe.nguid, probe.size)
            except (OSError, PifarmError):
                continue  # half-written or corrupt volume: not exported until it reads cleanly
            out.append(ns)
        return tuple(sorted(out, key=lambda n: n.nsid))


def directory_exports(data_dir: str | os.PathLike, subnqn: str, allowed_hosts: frozenset[str] | set[str] = frozenset(),
                      *, allow_any_host: bool = False, host: str = "127.0.0.1", port: int = 4420,
                      **config: object) -> Callable[[], TargetConfig]:
    """A rescan function exporting every volume under `data_dir` as one subsystem; call it for
    the first config and hand it to `serve(..., rescan=)` / `ThreadedTarget(..., rescan=)`."""
    volumes = VolumeDirectory(data_dir)
    hosts = frozenset(allowed_hosts)

    def scan() -> TargetConfig:
        sub = SubsystemExport(subnqn, volumes.scan(), hosts, allow_any_host)
        return TargetConfig((sub,), host=host, port=port, **config)  # type: ignore[arg-type]

    return scan

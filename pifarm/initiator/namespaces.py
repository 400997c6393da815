"""Which block device holds which model version: NVMe namespaces found by UUID.

The aggregator exports each version under a namespace whose UUID (and NGUID) is derived from
the manifest digest (`pifarm.signed.manifest.namespace_uuid`), so a node needs no other map:
`/sys/block/nvmeXnY/uuid` (or `wwid` = "uuid.<UUID>") names the version. Devices are watched
with pyudev on the kernel's own uevents (`Monitor.from_netlink(context, source="kernel")`), which
work without udevd (a bare initramfs, a minimal Pi image); a namespace the target adds later is
announced by the kernel's rescan after an async event and picked up here without reconnecting.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pifarm.signed.manifest import namespace_nguid, namespace_uuid

log = logging.getLogger(__name__)

_NIL = uuid.UUID(int=0)
_NS_NAME = re.compile(r"^nvme\d+n\d+\Z")


@dataclass(frozen=True)
class Namespace:
    name: str  # nvme1n2
    dev: Path  # /dev/nvme1n2
    uuid: uuid.UUID | None
    nguid: str  # 32 hex digits, "" when the namespace has none
    subsysnqn: str
    nsid: int

    def matches(self, manifest_digest: str) -> bool:
        if self.uuid is not None and self.uuid == namespace_uuid(manifest_digest):
            return True
        return bool(self.nguid) and self.nguid == namespace_nguid(manifest_digest).hex()


def _attr(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def read_namespace(block: Path, dev_root: Path = Path("/dev")) -> Namespace | None:
    """The namespace behind `/sys/block/<name>`, or None if it is not an NVMe namespace (or gone)."""
    name = block.name
    if not _NS_NAME.match(name):
        return None  # controllers are nvmeX, hidden multipath paths nvmeXcYnZ, partitions nvmeXnYpZ
    u: uuid.UUID | None = None
    raw = _attr(block / "uuid")
    wwid = _attr(block / "wwid")
    for cand in (raw, wwid[5:] if wwid.startswith("uuid.") else ""):
        try:
            u = uuid.UUID(cand)
        except ValueError:
            continue
        if u != _NIL:
            break
        u = None
    nguid = _attr(block / "nguid").replace("-", "").lower()
    if set(nguid) <= {"0"}:
        nguid = ""
    subsys = _attr(block / "device" / "subsysnqn") or _attr(block / "device" / ".." / "subsysnqn")
    try:
        nsid = int(_attr(block / "nsid") or 0)
    except ValueError:
        nsid = 0
    return Namespace(name, dev_root / name, u, nguid, subsys, nsid)


class NamespaceIndex:
    """Live view of the NVMe namespaces of this host, keyed by device name.

    `scan()` reads sysfs; `start()` follows kernel uevents in a thread so `wait_for` returns as
    soon as the device appears. Listeners get ("add"|"remove", Namespace) calls.
    """

    def __init__(self, sys_root: str | os.PathLike = "/sys", dev_root: str | os.PathLike = "/dev"):
        self.sys_root = Path(sys_root)
        self.dev_root = Path(dev_root)
        self._ns: dict[str, Namespace] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listeners: list[Callable[[str, Namespace], None]] = []
        self.via_uevent: set[str] = set()  # devices first seen through a uevent, not a scan

    # ------------------------------------------------------------------ reading
    def scan(self) -> dict[str, Namespace]:
        found = {}
        block = self.sys_root / "block"
        if block.is_dir():
            for b in sorted(block.iterdir()):
                ns = read_namespace(b, self.dev_root)
                if ns is not None:
                    found[ns.name] = ns
        with self._cond:
            gone = set(self._ns) - set(found)
            new = set(found) - set(self._ns)
            self._ns = found
            self._cond.notify_all()
        for name in sorted(gone):
            self._emit("remove", Namespace(name, self.dev_root / name, None, "", "", 0))
        for name in sorted(new):
            self._emit("add", found[name])
        return dict(found)

    def namespaces(self) -> list[Namespace]:
        with self._cond:
            return list(self._ns.values())

    def find(self, manifest_digest: str) -> Namespace | None:
        with self._cond:
            for ns in self._ns.values():
                if ns.matches(manifest_digest):
                    return ns
        return None

    def wait_for(self, manifest_digest: str, timeout: float) -> Namespace | None:
        """The namespace of this version, waiting up to `timeout` s for it to appear."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for ns in self._ns.values():
                    if ns.matches(manifest_digest):
                        return ns
                left = end - time.monotonic()
                if left <= 0:
                    return None
                # without a monitor thread nothing would wake us: rescan on a short period
                self._cond.wait(left if self._thread is not None else min(left, 0.2))
                if self._thread is None:
                    self._cond.release()
                    try:
                        self.scan()
                    finally:
                        self._cond.acquire()

    def add_listener(self, fn: Callable[[str, Namespace], None]) -> None:
        self._listeners.append(fn)

    def _emit(self, action: str, ns: Namespace) -> None:
        for fn in list(self._listeners):
            try:
                fn(action, ns)
            except Exception:  # a listener's bug must not kill the uevent thread
                log.exception("namespace listener failed on %s %s", action, ns.name)

    # ------------------------------------------------------------------ uevents
    def start(self) -> None:
        """Follow kernel uevents (block subsystem) in a daemon thread; then scan once."""
        if self._thread is not None:
            return
        import pyudev

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context, source="kernel")
        monitor.start()  # subscribe before the scan, so nothing between the two is missed
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, args=(monitor,), name="nvme-uevents", daemon=True)
        self._thread.start()
        self.scan()

    def _follow(self, monitor) -> None:
        while not self._stop.is_set():
            try:
                dev = monitor.poll(timeout=0.5)
            except OSError as e:  # ENOBUFS after a uevent storm: resync from sysfs
                log.warning("uevent socket: %s; rescanning", e)
                self.scan()
                continue
            if dev is None or dev.subsystem != "block":
                continue
            name = dev.sys_name
            if not _NS_NAME.match(name):
                continue
            if dev.action == "add":
                ns = self._settle(name)
                if ns is not None:
                    with self._cond:
                        fresh = name not in self._ns
                        self._ns[name] = ns
                        if fresh:
                            self.via_uevent.add(name)
                        self._cond.notify_all()
                    if fresh:
                        log.info("namespace %s appeared (uuid %s)", name, ns.uuid)
                        self._emit("add", ns)
            elif dev.action == "remove":
                with self._cond:
                    ns = self._ns.pop(name, None)
                    self._cond.notify_all()
                if ns is not None:
                    log.info("namespace %s went away", name)
                    self._emit("remove", ns)

    def _settle(self, name: str) -> Namespace | None:
        """sysfs attributes and the /dev node exist by the time the uevent is sent, but a
        partition or a device removed at once may not: read, retrying a few times, briefly."""
        for _ in range(20):
            ns = read_namespace(self.sys_root / "block" / name, self.dev_root)
            if ns is None:
                return None
            if ns.dev.exists():
                return ns
            time.sleep(0.05)
        return read_namespace(self.sys_root / "block" / name, self.dev_root)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

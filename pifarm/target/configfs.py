"""A small object model of the kernel NVMe target's configfs tree (`/sys/kernel/config/nvmet`).

Handles are cheap: a node is (backend, relative path) and nothing else. Identity is the path,
children are listed live on every access, and every OSError the kernel returns becomes one
`ConfigfsError` naming the path, what was attempted and what to do about it.

All filesystem work goes through a `Backend` (the seam): `RealBackend` talks to a directory (the
real configfs, or any root you point it at); the test double
`pifarm.testing.fake_configfs.FakeConfigfs` is an in-memory tree that refuses what the kernel
refuses, for the fast tests. The same contract tests run against both. This module never imports
the double: `[target] configfs_root = "fake:FILE"` is resolved where the appliance wires the
target (`pifarm.appliance.target_root`).
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
from pathlib import Path
from typing import Iterator, Protocol

from pifarm.errors import ConfigfsError, NotFound, UsageError

__all__ = [
    "Backend", "RealBackend", "Mode", "Node", "Root", "Host", "Subsystem", "Namespace", "Port",
    "DEFAULT_ROOT", "configfs_error",
]

DEFAULT_ROOT = "/sys/kernel/config/nvmet"


class Backend(Protocol):
    """Filesystem operations on paths relative to the nvmet root ("" is the root itself).

    Implementations raise OSError with the errno the kernel would return."""

    label: str  # shown in messages, e.g. "/sys/kernel/config/nvmet"

    def kind(self, rel: str) -> str | None: ...  # "dir", "file", "link" or None
    def listdir(self, rel: str) -> list[str]: ...
    def mkdir(self, rel: str) -> None: ...
    def rmdir(self, rel: str) -> None: ...
    def read(self, rel: str) -> str: ...
    def write(self, rel: str, value: str) -> None: ...
    def symlink(self, target_rel: str, rel: str) -> None: ...
    def unlink(self, rel: str) -> None: ...
    def readlink(self, rel: str) -> str: ...  # target, relative to the root


class RealBackend:
    """The real thing (or any directory laid out like it)."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT):
        self.root = Path(root)
        self.label = str(self.root)

    def _p(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def kind(self, rel: str) -> str | None:
        p = self._p(rel)
        if p.is_symlink():
            return "link"
        if p.is_dir():
            return "dir"
        if p.exists():
            return "file"
        return None

    def listdir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self._p(rel)))

    def mkdir(self, rel: str) -> None:
        os.mkdir(self._p(rel))

    def rmdir(self, rel: str) -> None:
        os.rmdir(self._p(rel))

    def read(self, rel: str) -> str:
        with open(self._p(rel), encoding="utf-8") as f:
            return f.read()

    def write(self, rel: str, value: str) -> None:
        # no O_CREAT: configfs cannot create attributes, and ENOENT says "the kernel lacks it"
        fd = os.open(self._p(rel), os.O_WRONLY)
        try:
            os.write(fd, value.encode())  # configfs stores on each write(): one write per value
        finally:
            os.close(fd)

    def symlink(self, target_rel: str, rel: str) -> None:
        os.symlink(self._p(target_rel), self._p(rel))

    def unlink(self, rel: str) -> None:
        os.unlink(self._p(rel))

    def readlink(self, rel: str) -> str:
        link = self._p(rel)
        target = os.readlink(link)
        full = posixpath.normpath(posixpath.join(str(link.parent), target))
        return posixpath.relpath(full, str(self.root))


# ---- errors -------------------------------------------------------------------------------

_HINTS: dict[tuple[str, int], str] = {
    ("mkdir", errno.EEXIST): "it already exists",
    ("mkdir", errno.EINVAL): "the kernel refused the name (nsid 1..4294967294, port id 0..65535, not the discovery NQN)",
    ("mkdir", errno.EPERM): "objects cannot be created here",
    ("rmdir", errno.ENOTEMPTY): "remove what it contains first (namespaces, allowed_hosts and port links)",
    ("rmdir", errno.EBUSY): "something links to it: unlink it from ports/allowed_hosts first",
    ("rmdir", errno.EPERM): "default groups cannot be removed",
    ("write", errno.EBUSY): "disable the namespace first (enable=0)",
    ("write", errno.EACCES): "the port is enabled: unlink its subsystems before changing its address",
    ("write", errno.ENOENT): "this kernel does not have that attribute",
    ("write", errno.EROFS): "the backing file must be on a writable filesystem (nvmet opens it read-write)",
    ("write", errno.EADDRINUSE): "the address/port is already in use",
    ("write", errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524): "the kernel lacks that algorithm",
    ("symlink", errno.EINVAL): "wrong kind of target, or allow_any_host is set on the subsystem",
    ("symlink", errno.EEXIST): "already linked",
    ("symlink", errno.EADDRINUSE): "the address/port is already in use",
}


def _hint(op: str, rel: str, err: int) -> str:
    if err in (errno.EACCES, errno.EPERM) and op in ("mkdir", "rmdir", "symlink") or (
            err == errno.EACCES and op == "read"):
        return "needs root (and the nvmet module loaded)"
    if op == "write" and rel.endswith("/enable") and err == errno.EINVAL:
        return ("the kernel refused to enable it: set device_path first, and buffered_io=1 when the "
                "file is on tmpfs (no O_DIRECT)")
    if op == "write" and rel.endswith("/buffered_io") and err == errno.EINVAL:
        return "disable the namespace first (enable=0)"
    if op == "write" and rel.endswith("/attr_allow_any_host") and err == errno.EINVAL:
        return "unlink its allowed_hosts first"
    if err == errno.ENOENT and op != "write":
        return "no such object (is the nvmet module loaded? `modprobe nvmet nvmet-tcp`)"
    return _HINTS.get((op, err), "the kernel refused it")


#: attributes whose values are secrets: never in an error, a plan, a log line or /health
SECRET_ATTRS = ("dhchap_key", "dhchap_ctrl_key")


def configfs_error(op: str, label: str, rel: str, e: OSError, value: str | None = None) -> ConfigfsError:
    path = posixpath.join(label, rel) if rel else label
    if value is not None and posixpath.basename(rel) in SECRET_ATTRS:
        value = "<secret>"  # the error ends up in last_error, GET /health and the journal
    what = f"{op} {path}" + (f" = {value!r}" if value is not None else "")
    return ConfigfsError(f"configfs {what}: {os.strerror(e.errno or 0)} (errno {e.errno}); {_hint(op, rel, e.errno or 0)}", path)


# ---- nodes --------------------------------------------------------------------------------

class Mode(enum.Enum):
    CREATE = "create"  # must not exist yet; created
    LOOKUP = "lookup"  # must exist already
    ANY = "any"        # created unless it exists


class Node:
    """One configfs directory. Subclasses add identity and children only."""

    kind = "object"

    def __init__(self, backend: Backend, rel: str, mode: Mode = Mode.LOOKUP):
        self.backend = backend
        self.rel = rel
        exists = backend.kind(rel) == "dir"
        if mode is Mode.CREATE and exists:
            raise ConfigfsError(f"{self.kind} {self.path} already exists", self.path)
        if mode is Mode.LOOKUP and not exists:
            raise NotFound(f"{self.kind} {self.path} does not exist in configfs")
        if not exists:
            self._do("mkdir", rel)

    @property
    def path(self) -> str:
        return posixpath.join(self.backend.label, self.rel) if self.rel else self.backend.label

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and (other.backend, other.rel) == (self.backend, self.rel)

    def __hash__(self) -> int:
        return hash(self.rel)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.rel or '/'}>"

    def _do(self, op: str, rel: str, *args: str):
        try:
            return getattr(self.backend, op)(*args, rel) if op == "symlink" else getattr(self.backend, op)(rel, *args)
        except OSError as e:
            raise configfs_error(op, self.backend.label, rel, e, args[0] if op == "write" else None) from e

    @property
    def exists(self) -> bool:
        return self.backend.kind(self.rel) == "dir"

    def entries(self) -> list[str]:
        """Every name in the directory (attributes and groups), one listdir."""
        return self._do("listdir", self.rel)

    def attrs(self) -> list[str]:
        return [n for n in self._do("listdir", self.rel) if self.backend.kind(posixpath.join(self.rel, n)) == "file"]

    def has_attr(self, name: str) -> bool:
        return self.backend.kind(posixpath.join(self.rel, name)) == "file"

    def get(self, name: str) -> str:
        """An attribute's value without the kernel's trailing newline."""
        v = self._do("read", posixpath.join(self.rel, name))
        return v[:-1] if v.endswith("\n") else v

    def set(self, name: str, value: str | int | bool) -> None:
        if isinstance(value, bool):
            value = int(value)
        self._do("write", posixpath.join(self.rel, name), str(value))

    def _children(self, sub: str) -> list[str]:
        d = posixpath.join(self.rel, sub)
        return [n for n in self._do("listdir", d) if self.backend.kind(posixpath.join(d, n)) == "dir"]

    def _links(self, sub: str) -> dict[str, str]:
        d = posixpath.join(self.rel, sub)
        out = {}
        for n in self._do("listdir", d):
            if self.backend.kind(posixpath.join(d, n)) == "link":
                out[n] = self._do("readlink", posixpath.join(d, n))
        return out

    def delete(self) -> None:
        self._do("rmdir", self.rel)


class Host(Node):
    kind = "host"

    def __init__(self, backend: Backend, nqn: str, mode: Mode = Mode.LOOKUP):
        _check_name(nqn, "host NQN")
        self.nqn = nqn
        super().__init__(backend, f"hosts/{nqn}", mode)

    @property
    def supports_dhchap(self) -> bool:
        return self.has_attr("dhchap_key")


class Subsystem(Node):
    kind = "subsystem"

    def __init__(self, backend: Backend, nqn: str, mode: Mode = Mode.LOOKUP):
        _check_name(nqn, "subsystem NQN")
        self.nqn = nqn
        super().__init__(backend, f"subsystems/{nqn}", mode)

    @property
    def namespaces(self) -> list["Namespace"]:
        return [Namespace(self, int(n)) for n in sorted(self._children("namespaces"), key=_numkey)]

    def namespace(self, nsid: int, mode: Mode = Mode.LOOKUP) -> "Namespace":
        return Namespace(self, nsid, mode)

    @property
    def allowed_hosts(self) -> list[str]:
        return sorted(posixpath.basename(t) for t in self._links("allowed_hosts").values())

    def allow_host(self, host: Host) -> None:
        self._do("symlink", f"{self.rel}/allowed_hosts/{host.nqn}", host.rel)

    def disallow_host(self, nqn: str) -> None:
        for name, target in self._links("allowed_hosts").items():
            if posixpath.basename(target) == nqn:
                self._do("unlink", f"{self.rel}/allowed_hosts/{name}")


class Namespace(Node):
    kind = "namespace"

    def __init__(self, subsystem: Subsystem, nsid: int, mode: Mode = Mode.LOOKUP):
        if not isinstance(nsid, int) or not 1 <= nsid <= 0xFFFFFFFE:
            raise UsageError(f"namespace id {nsid!r} must be an integer 1..4294967294")
        self.subsystem = subsystem
        self.nsid = nsid
        super().__init__(subsystem.backend, f"{subsystem.rel}/namespaces/{nsid}", mode)

    @property
    def enabled(self) -> bool:
        return self.get("enable") == "1"

    def enable(self, on: bool = True) -> None:
        self.set("enable", 1 if on else 0)


class Port(Node):
    kind = "port"

    def __init__(self, backend: Backend, portid: int, mode: Mode = Mode.LOOKUP):
        if not isinstance(portid, int) or not 0 <= portid <= 0xFFFF:
            raise UsageError(f"port id {portid!r} must be an integer 0..65535")
        self.portid = portid
        super().__init__(backend, f"ports/{portid}", mode)

    @property
    def subsystems(self) -> list[str]:
        return sorted(posixpath.basename(t) for t in self._links("subsystems").values())

    def link(self, subsystem: Subsystem) -> None:
        self._do("symlink", f"{self.rel}/subsystems/{subsystem.nqn}", subsystem.rel)

    def unlink(self, nqn: str) -> None:
        for name, target in self._links("subsystems").items():
            if posixpath.basename(target) == nqn:
                self._do("unlink", f"{self.rel}/subsystems/{name}")


class Root(Node):
    """The nvmet root: hosts/, subsystems/, ports/."""

    kind = "nvmet root"

    def __init__(self, backend: Backend):
        self.backend = backend
        self.rel = ""
        if backend.kind("") != "dir" or backend.kind("subsystems") != "dir":
            raise ConfigfsError(
                f"{backend.label} is not an nvmet configfs tree: load the modules (`modprobe nvmet "
                f"nvmet-tcp`) and mount configfs, or set [target] configfs_root", backend.label)

    @classmethod
    def at(cls, root: str | os.PathLike) -> "Root":
        """The tree at a path. A `fake:FILE` root is the test double's, opened by the appliance."""
        s = str(root)
        if s.startswith("fake:"):
            raise UsageError(f"configfs root {s!r} is a fake tree: open it with "
                             f"pifarm.appliance.target_root.open_root (the target never loads test doubles)")
        return cls(RealBackend(s))

    @property
    def hosts(self) -> list[Host]:
        return [Host(self.backend, n) for n in self._children("hosts")]

    @property
    def subsystems(self) -> list[Subsystem]:
        return [Subsystem(self.backend, n) for n in self._children("subsystems")]

    @property
    def ports(self) -> list[Port]:
        return [Port(self.backend, int(n)) for n in sorted(self._children("ports"), key=_numkey)]

    def host(self, nqn: str, mode: Mode = Mode.LOOKUP) -> Host:
        return Host(self.backend, nqn, mode)

    def subsystem(self, nqn: str, mode: Mode = Mode.LOOKUP) -> Subsystem:
        return Subsystem(self.backend, nqn, mode)

    def port(self, portid: int, mode: Mode = Mode.LOOKUP) -> Port:
        return Port(self.backend, portid, mode)

    def walk(self) -> Iterator[Node]:
        """Every object, parents first."""
        for h in self.hosts:
            yield h
        for s in self.subsystems:
            yield s
            yield from s.namespaces
        yield from self.ports

    def delete(self) -> None:
        raise ConfigfsError("the nvmet root cannot be removed", self.path)


def _numkey(s: str) -> tuple[int, str]:
    return (int(s), s) if s.isdigit() else (1 << 40, s)


def _check_name(name: str, what: str) -> None:
    # names become path components: refuse anything that could walk out of the tree
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > 223:
        raise UsageError(f"invalid {what} {name!r}: 1-223 characters, no '/'")

"""Target state as plain values: what we want (built from the registry) and what configfs holds.

Both sides use the same frozen types, so the reconciler compares like with like. Attributes are
keyed by their configfs file names (`device_path`, `attr_allow_any_host`, `addr_traddr`, ...)
and held as the strings the kernel reads back, so a desired value equals an observed one exactly
when nothing needs writing.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from pifarm.durable import atomic_write
from pifarm.errors import ConfigfsError, UsageError
from pifarm.signed.manifest import namespace_nguid, namespace_uuid
from pifarm.target.configfs import Root

__all__ = [
    "NamespaceSpec", "SubsystemSpec", "PortSpec", "HostSpec", "TargetSpec", "Scope", "Export",
    "observe", "build_spec", "default_nqn", "supports_o_direct", "LOCKED_NS_ATTRS",
    "load_scope", "save_scope",
]

#: namespace attributes the kernel only accepts while the namespace is disabled
LOCKED_NS_ATTRS = ("device_path", "device_uuid", "device_nguid", "buffered_io")
_NS_ATTRS = (*LOCKED_NS_ATTRS, "ana_grpid")
#: nvmet's default controller id range (1..NVME_CNTLID_MAX)
DEFAULT_CNTLID = (1, 65519)
_HOST_PREFIX, _SUBSYS_PREFIX, _PORT_PREFIXES = "dhchap_", "attr_", ("addr_", "param_")


@dataclass(frozen=True)
class NamespaceSpec:
    nsid: int
    attrs: Mapping[str, str]
    enabled: bool = True


@dataclass(frozen=True)
class SubsystemSpec:
    nqn: str
    attrs: Mapping[str, str] = field(default_factory=lambda: {"attr_allow_any_host": "0"})
    namespaces: Mapping[int, NamespaceSpec] = field(default_factory=dict)
    allowed_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PortSpec:
    portid: int
    attrs: Mapping[str, str]
    subsystems: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HostSpec:
    nqn: str
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSpec:
    hosts: Mapping[str, HostSpec] = field(default_factory=dict)
    subsystems: Mapping[str, SubsystemSpec] = field(default_factory=dict)
    ports: Mapping[int, PortSpec] = field(default_factory=dict)
    #: observed only: does this kernel have DH-HMAC-CHAP? None when no host exists to tell
    auth: bool | None = None


@dataclass(frozen=True)
class Scope:
    """Objects pifarm manages. Anything else in configfs is left exactly as it is."""

    hosts: frozenset[str] = frozenset()
    subsystems: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()

    @classmethod
    def of(cls, spec: TargetSpec) -> "Scope":
        return cls(frozenset(spec.hosts), frozenset(spec.subsystems), frozenset(spec.ports))

    def __or__(self, other: "Scope") -> "Scope":
        return Scope(self.hosts | other.hosts, self.subsystems | other.subsystems, self.ports | other.ports)


def load_scope(path: Path) -> Scope:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return Scope()
    except ValueError as e:
        raise ConfigfsError(f"{path} is corrupt ({e}); delete it to let pifarm re-learn what it manages", str(path)) from e
    return Scope(frozenset(d.get("hosts", [])), frozenset(d.get("subsystems", [])), frozenset(int(p) for p in d.get("ports", [])))


def save_scope(path: Path, scope: Scope) -> None:
    atomic_write(path, json.dumps({"hosts": sorted(scope.hosts), "subsystems": sorted(scope.subsystems),
                                   "ports": sorted(scope.ports)}, indent=1).encode())


# ---- observing the live tree -----------------------------------------------------------

def _read_attrs(node, names: Iterable[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = node.get(n)
        except ConfigfsError:
            continue  # write-only or transient attributes are not state
    return out


def observe(root: Root) -> TargetSpec:
    """Read the whole nvmet tree into a TargetSpec (children listed live, nothing cached)."""
    hosts, auth = {}, None
    # entries() and prefix filters instead of attrs(): one listdir per object, no stat per name
    for h in root.hosts:
        names = h.entries()
        auth = auth or any(n.startswith(_HOST_PREFIX) for n in names)
        hosts[h.nqn] = HostSpec(h.nqn, _read_attrs(h, [n for n in names if n.startswith(_HOST_PREFIX)]))
    if hosts and auth is None:
        auth = False
    subsystems = {}
    for s in root.subsystems:
        namespaces = {}
        for ns in s.namespaces:
            a = _read_attrs(ns, [n for n in ns.entries() if n in _NS_ATTRS or n == "enable"])
            enabled = a.pop("enable", "0") == "1"
            namespaces[ns.nsid] = NamespaceSpec(ns.nsid, a, enabled)
        subsystems[s.nqn] = SubsystemSpec(s.nqn, _read_attrs(s, [n for n in s.entries() if n.startswith(_SUBSYS_PREFIX)]),
                                          namespaces, frozenset(s.allowed_hosts))
    ports = {}
    for p in root.ports:
        ports[p.portid] = PortSpec(p.portid, _read_attrs(p, [n for n in p.entries() if n.startswith(_PORT_PREFIXES)]),
                                   frozenset(p.subsystems))
    return TargetSpec(hosts, subsystems, ports, auth)


# ---- building the desired state ----------------------------------------------------------

@dataclass(frozen=True)
class Export:
    """One served model version to export: plain data, so callers need not hold a Registry."""

    name: str
    version: int
    manifest_digest: str
    path: str  # the volume file
    #: the namespace id the registry assigned (several aggregators of one bucket: the same on each)
    nsid: int | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


def default_nqn(hostname: str | None = None) -> str:
    h = (hostname or socket.gethostname()).lower()
    h = "".join(c if c.isalnum() or c in ".-" else "-" for c in h).strip("-.") or "aggregator"
    return f"nqn.2014-08.org.pifarm:aggregator:{h}"


def supports_o_direct(path: str | os.PathLike) -> bool:
    """Whether nvmet can open this file O_DIRECT (tmpfs cannot: then buffered_io=1 is needed)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    p = Path(path)
    probe = None
    if not p.exists():  # not built yet (a dry run): probe a scratch file beside it
        if not p.parent.is_dir():
            return True
        probe = p.parent / f".odirect-probe.{uuidlib.uuid4().hex}"
        try:
            probe.touch()
        except OSError:
            return True
        p = probe
    try:
        fd = os.open(p, os.O_RDONLY | flag)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
    os.close(fd)
    return True


def namespace_attrs(export: Export, buffered_io: bool) -> dict[str, str]:
    return {
        "device_path": export.path,
        "device_uuid": str(namespace_uuid(export.manifest_digest)),
        "device_nguid": str(uuidlib.UUID(bytes=namespace_nguid(export.manifest_digest))),
        "buffered_io": "1" if buffered_io else "0",
    }


def port_attrs(traddr: str, trsvcid: int | str) -> dict[str, str]:
    # trtype first: writing it resets the port's tsas
    return {"addr_trtype": "tcp", "addr_adrfam": "ipv6" if ":" in traddr else "ipv4",
            "addr_traddr": traddr, "addr_trsvcid": str(trsvcid)}


def build_spec(*, subsystem_nqn: str, exports: Iterable[Export], nsids: Mapping[str, int],
               ports: Mapping[int, tuple[str, int]], hosts: Mapping[str, Mapping[str, str]],
               buffered_io: bool | None = None, cntlid: tuple[int, int] = DEFAULT_CNTLID) -> TargetSpec:
    """The desired tree: one subsystem, one enabled namespace per export, `attr_allow_any_host=0`,
    each host in `hosts` (nqn -> dhchap attrs) allowed, the subsystem linked on every port.

    `buffered_io=None` decides per volume file (O_DIRECT probe); True/False forces it. `cntlid`
    is the (min, max) controller id range; the default is the kernel's, so it writes nothing.
    """
    namespaces = {}
    for e in exports:
        nsid = nsids.get(e.key)
        if nsid is None:
            raise UsageError(f"no namespace id allocated for {e.key}")
        if nsid in namespaces:
            raise UsageError(f"namespace id {nsid} allocated twice ({e.key})")
        bio = (not supports_o_direct(e.path)) if buffered_io is None else buffered_io
        namespaces[nsid] = NamespaceSpec(nsid, namespace_attrs(e, bio))
    attrs = {"attr_allow_any_host": "0", "attr_cntlid_min": str(cntlid[0]), "attr_cntlid_max": str(cntlid[1])}
    sub = SubsystemSpec(subsystem_nqn, attrs, namespaces, frozenset(hosts))
    host_specs = {n: HostSpec(n, dict(a)) for n, a in hosts.items()}
    port_specs = {pid: PortSpec(pid, port_attrs(*addr), frozenset({subsystem_nqn})) for pid, addr in ports.items()}
    return TargetSpec(host_specs, {subsystem_nqn: sub}, port_specs)

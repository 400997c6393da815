"""An in-memory nvmet configfs that refuses what the kernel refuses, with the kernel's errnos.

A test double (pifarm/testing/__init__.py says who may import it). For speed only:
tests/target/test_contract.py runs the same contract against the real kernel in the VM. The
rules follow drivers/nvme/target/configfs.c and fs/configfs (see the README section "NVMe/TCP
target (configfs)" for the list the real kernel taught us):

- mkdir only inside hosts/, subsystems/, subsystems/S/namespaces/, ports/ (else EPERM); nsid is
  kstrtou32 (base 0), 0 and 0xffffffff refused (EINVAL); port ids are kstrtou16 (EINVAL); the
  discovery NQN cannot be a subsystem (EINVAL); an existing name is EEXIST.
- rmdir: default groups EPERM; an item something links to EBUSY (configfs s_links); an item
  holding namespaces or links ENOTEMPTY; an enabled namespace may be removed (nvmet disables it).
- namespace device_path/device_uuid/device_nguid: EBUSY while enabled; buffered_io: EINVAL while
  enabled; enable=1 opens the real backing file O_RDWR (plus O_DIRECT unless buffered_io), so
  tmpfs gives EINVAL, a read-only filesystem EROFS, a missing file ENOENT, exactly as nvmet does.
- port addr_*/param_*: EACCES while the port is enabled (= has a subsystem link); the first link
  enables the port and needs a complete tcp/ipv4|ipv6 address (EINVAL otherwise).
- allowed_hosts: only hosts (EINVAL), not while attr_allow_any_host=1 (EINVAL), no duplicates
  (EEXIST); attr_allow_any_host=1 refused while hosts are linked (EINVAL).
- hosts/H/dhchap_* exist only on the auth profile (kernel 6.12 with CONFIG_NVME_TARGET_AUTH);
  keys must start "DHHC-1:<0..3>:" (EINVAL).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["FakeConfigfs", "PROFILES"]

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
MAX_NAMESPACES = 1024
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
PROFILES = ("6.1", "6.12")
# the top-level groups that hold named objects, and the kind _resolve gives one of them
_TOP_KINDS = {"hosts": "host", "subsystems": "subsys", "ports": "port"}


def _err(code: int, rel: str = "") -> OSError:
    return OSError(code, os.strerror(code), rel)


def _kstrtobool(v: str) -> bool:
    s = v.strip("\n")
    if s[:1] in ("1", "y", "Y"):
        return True
    if s[:1] in ("0", "n", "N"):
        return False
    if s.lower() in ("on",):
        return True
    if s.lower() in ("off",):
        return False
    raise _err(errno.EINVAL)


def _kstrtou(v: str, bits: int) -> int:
    s = v.strip("\n")
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
            n = int(s, 16)
        elif re.fullmatch(r"0[0-7]+", s):
            n = int(s, 8)
        elif re.fullmatch(r"[0-9]+", s):
            n = int(s, 10)
        else:
            raise ValueError(s)
    except ValueError:
        raise _err(errno.EINVAL) from None
    if n >= 1 << bits:
        raise _err(errno.ERANGE)
    return n


def _ascii(v: str, maxlen: int) -> str:
    s = v.split("\n")[0]
    if not s or len(s) > maxlen or any(not 0x20 <= ord(c) <= 0x7E for c in s):
        raise _err(errno.EINVAL)
    return s


def _fmt_uuid(raw: bytes) -> str:
    return str(uuidlib.UUID(bytes=raw))


def _parse_nguid(v: str) -> str:
    out, p = bytearray(), 0
    hexd = "0123456789abcdefABCDEF"
    for _ in range(16):
        if p + 2 > len(v) or v[p] not in hexd or v[p + 1] not in hexd:
            raise _err(errno.EINVAL)
        out.append(int(v[p:p + 2], 16))
        p += 2
        if p < len(v) and v[p] in "-:":
            p += 1
    return _fmt_uuid(bytes(out))


def _parse_uuid(v: str) -> str:
    s = v.split("\n")[0]
    if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", s):
        raise _err(errno.EINVAL)
    return s.lower()


@dataclass
class _Ns:
    attrs: dict[str, str]
    enabled: bool = False


@dataclass
class _Subsys:
    attrs: dict[str, str]
    namespaces: dict[str, _Ns] = field(default_factory=dict)
    allowed: dict[str, str] = field(default_factory=dict)  # link name -> host nqn


@dataclass
class _Port:
    attrs: dict[str, str]
    links: dict[str, str] = field(default_factory=dict)  # link name -> subsystem nqn


class FakeConfigfs:
    """A `configfs.Backend` holding the nvmet tree in memory (optionally persisted to a file)."""

    def __init__(self, profile: str = "6.12", label: str = "/sys/kernel/config/nvmet (fake)",
                 state_file: str | os.PathLike | None = None):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}")
        self.profile = profile
        self.auth = profile == "6.12"
        self.label = label
        self.hosts: dict[str, dict[str, str]] = {}
        self.subsystems: dict[str, _Subsys] = {}
        self.ports: dict[str, _Port] = {}
        # 6.12 has a root attribute naming the discovery subsystem (nvmetcli's "discovery" group)
        self.root_attrs: dict[str, str] = {"discovery_nqn": DISCOVERY_NQN} if self.auth else {}
        self._state_file = Path(state_file) if state_file else None
        self._lock = threading.Lock()
        self.writes = 0  # mutating calls, so benches and tests can count kernel work

    # ---- persistence (the `fake:FILE` root used by CLI tests and demos) ------------------
    @classmethod
    def persistent(cls, path: str | os.PathLike, profile: str = "6.12") -> "FakeConfigfs":
        fs = cls(profile, label=f"fake:{path}", state_file=path)
        p = Path(path)
        if p.exists():
            doc = json.loads(p.read_text())
            fs.profile = doc.get("profile", profile)
            fs.auth = fs.profile == "6.12"
            fs.root_attrs = doc.get("root_attrs", {"discovery_nqn": DISCOVERY_NQN} if fs.auth else {})
            fs.hosts = doc["hosts"]
            fs.subsystems = {k: _Subsys(v["attrs"], {n: _Ns(a["attrs"], a["enabled"]) for n, a in v["namespaces"].items()},
                                        v["allowed"]) for k, v in doc["subsystems"].items()}
            fs.ports = {k: _Port(v["attrs"], v["links"]) for k, v in doc["ports"].items()}
        return fs

    def _save(self) -> None:
        self.writes += 1
        if self._state_file is None:
            return
        doc = {
            "profile": self.profile, "root_attrs": self.root_attrs, "hosts": self.hosts,
            "subsystems": {k: {"attrs": s.attrs, "allowed": s.allowed,
                               "namespaces": {n: {"attrs": ns.attrs, "enabled": ns.enabled} for n, ns in s.namespaces.items()}}
                           for k, s in self.subsystems.items()},
            "ports": {k: {"attrs": p.attrs, "links": p.links} for k, p in self.ports.items()},
        }
        tmp = self._state_file.with_name(f".{self._state_file.name}.{uuidlib.uuid4().hex}.part")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self._state_file)

    # ---- defaults -------------------------------------------------------------------------
    def _subsys_defaults(self) -> dict[str, str]:
        a = {"attr_allow_any_host": "0", "attr_cntlid_min": "1", "attr_cntlid_max": "65519", "attr_model": "Linux",
             "attr_pi_enable": "0", "attr_qid_max": "128", "attr_serial": uuidlib.uuid4().hex[:16], "attr_version": "1.3"}
        if self.auth:
            a.update({"attr_firmware": "6.12.0", "attr_ieee_oui": "0x000000"})
        return a

    def _port_defaults(self) -> dict[str, str]:
        a = {"addr_adrfam": "", "addr_traddr": "", "addr_treq": "not specified", "addr_trsvcid": "", "addr_trtype": "",
             "param_inline_data_size": "-1", "param_pi_enable": "0"}
        if self.auth:
            a.update({"addr_tsas": "reserved", "param_max_queue_size": "-1"})
        return a

    def _host_defaults(self) -> dict[str, str]:
        if not self.auth:
            return {}
        return {"dhchap_key": "", "dhchap_ctrl_key": "", "dhchap_hash": "hmac(sha256)", "dhchap_dhgroup": "null"}

    @staticmethod
    def _ns_defaults() -> dict[str, str]:
        # nvmet_ns_alloc gives every new namespace a random UUID; the NGUID starts zeroed
        return {"device_path": "", "device_uuid": str(uuidlib.uuid4()), "device_nguid": ZERO_UUID, "enable": "0",
                "buffered_io": "0", "ana_grpid": "1", "revalidate_size": ""}

    # ---- path resolution ------------------------------------------------------------------
    def _resolve(self, rel: str) -> tuple[str, Any, str | None]:
        """(kind, object, leaf) for a path; kind names what the path is; raises ENOENT."""
        p = [x for x in rel.split("/") if x] if rel else []
        n = len(p)
        if n == 0:
            return "root", None, None
        top = p[0]
        if n == 1 and top in self.root_attrs:
            return "attr", ("root",), top
        kind = _TOP_KINDS.get(top)
        if kind is None:
            raise _err(errno.ENOENT, rel)
        # hosts/, subsystems/ and ports/ begin alike: the group, one named object in it
        # (ENOENT when there is none), then that object's attributes
        if n == 1:
            return "group", top, None
        obj = getattr(self, top).get(p[1])
        if obj is None:
            raise _err(errno.ENOENT, rel)
        if n == 2:
            return kind, p[1], None
        if n == 3 and p[2] in (obj if kind == "host" else obj.attrs):
            return "attr", (kind, p[1]), p[2]
        if kind == "subsys":
            return self._resolve_in_subsys(rel, p, obj)
        if kind == "port":
            return self._resolve_in_port(rel, p, obj)
        raise _err(errno.ENOENT, rel)

    def _resolve_in_subsys(self, rel: str, p: list[str], s: _Subsys) -> tuple[str, Any, str | None]:
        n = len(p)
        if p[2] == "namespaces":
            if n == 3:
                return "group", ("namespaces", p[1]), None
            ns = s.namespaces.get(p[3])
            if ns is None:
                raise _err(errno.ENOENT, rel)
            if n == 4:
                return "ns", (p[1], p[3]), None
            if n == 5 and p[4] in ns.attrs:
                return "attr", ("ns", p[1], p[3]), p[4]
        elif p[2] == "allowed_hosts":
            if n == 3:
                return "group", ("allowed_hosts", p[1]), None
            if n == 4 and p[3] in s.allowed:
                return "link", ("allowed", p[1]), p[3]
        elif p[2] == "passthru" and self.auth and n == 3:
            return "group", ("passthru", p[1]), None
        raise _err(errno.ENOENT, rel)

    @staticmethod
    def _resolve_in_port(rel: str, p: list[str], port: _Port) -> tuple[str, Any, str | None]:
        n = len(p)
        if p[2] == "subsystems":
            if n == 3:
                return "group", ("port_subsystems", p[1]), None
            if n == 4 and p[3] in port.links:
                return "link", ("port", p[1]), p[3]
        elif p[2] == "referrals" and n == 3:
            return "group", ("referrals", p[1]), None
        elif p[2] == "ana_groups":
            if n == 3:
                return "group", ("ana_groups", p[1]), None
            if n == 4 and p[3] == "1":
                return "group", ("ana_group", p[1]), None
            if n == 5 and p[3] == "1" and p[4] == "ana_state":
                return "attr", ("ana", p[1]), "ana_state"
        raise _err(errno.ENOENT, rel)

    # ---- Backend ---------------------------------------------------------------------------
    def kind(self, rel: str) -> str | None:
        with self._lock:
            try:
                k, _o, _l = self._resolve(rel)
            except OSError:
                return None
        return {"attr": "file", "link": "link"}.get(k, "dir")

    def listdir(self, rel: str) -> list[str]:
        with self._lock:
            k, o, _ = self._resolve(rel)
            if k in ("attr", "link"):
                raise _err(errno.ENOTDIR, rel)
            if k == "root":
                return sorted(["hosts", "ports", "subsystems", *self.root_attrs])
            if k == "host":
                return sorted(self.hosts[o])
            if k == "subsys":
                s = self.subsystems[o]
                return sorted([*s.attrs, "namespaces", "allowed_hosts", *(["passthru"] if self.auth else [])])
            if k == "ns":
                return sorted(self.subsystems[o[0]].namespaces[o[1]].attrs)
            if k == "port":
                return sorted([*self.ports[o].attrs, "subsystems", "referrals", "ana_groups"])
            if o == "hosts":
                return sorted(self.hosts)
            if o == "subsystems":
                return sorted(self.subsystems)
            if o == "ports":
                return sorted(self.ports)
            g, key = o
            if g == "namespaces":
                return sorted(self.subsystems[key].namespaces)
            if g == "allowed_hosts":
                return sorted(self.subsystems[key].allowed)
            if g == "port_subsystems":
                return sorted(self.ports[key].links)
            if g == "ana_groups":
                return ["1"]
            if g == "ana_group":
                return ["ana_state"]
            return []

    def _resolve_new(self, rel: str) -> tuple[str, Any, str]:
        """(kind, object) of the parent of a path that must not exist yet, and its last name."""
        parent, _, name = rel.rpartition("/")
        try:
            self._resolve(rel)
            raise _err(errno.EEXIST, rel)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        k, o, _ = self._resolve(parent)
        return k, o, name

    def mkdir(self, rel: str) -> None:
        with self._lock:
            k, o, name = self._resolve_new(rel)
            if k != "group" or o in ("ana_groups",) or (isinstance(o, tuple) and o[0] not in ("namespaces",)):
                raise _err(errno.EPERM, rel)
            if o == "hosts":
                self.hosts[name] = self._host_defaults()
            elif o == "subsystems":
                if name in (DISCOVERY_NQN, self.root_attrs.get("discovery_nqn")) or len(name) > 223:
                    raise _err(errno.EINVAL, rel)
                self.subsystems[name] = _Subsys(self._subsys_defaults())
            elif o == "ports":
                try:
                    _kstrtou(name, 16)
                except OSError:
                    raise _err(errno.EINVAL, rel) from None
                self.ports[name] = _Port(self._port_defaults())
            else:
                nsid = _kstrtou(name, 32)
                if nsid == 0 or nsid == 0xFFFFFFFF:
                    raise _err(errno.EINVAL, rel)
                self.subsystems[o[1]].namespaces[name] = _Ns(self._ns_defaults())
            self._save()

    def rmdir(self, rel: str) -> None:
        with self._lock:
            k, o, _ = self._resolve(rel)
            if k in ("attr", "link"):
                raise _err(errno.ENOTDIR, rel)
            if k in ("root", "group"):
                raise _err(errno.EPERM, rel)
            if k == "host":
                if any(o in s.allowed.values() for s in self.subsystems.values()):
                    raise _err(errno.EBUSY, rel)
                del self.hosts[o]
            elif k == "subsys":
                s = self.subsystems[o]
                if any(o in p.links.values() for p in self.ports.values()):
                    raise _err(errno.EBUSY, rel)
                if s.namespaces or s.allowed:
                    raise _err(errno.ENOTEMPTY, rel)
                del self.subsystems[o]
            elif k == "ns":
                del self.subsystems[o[0]].namespaces[o[1]]  # nvmet disables it on release
            elif k == "port":
                if self.ports[o].links:
                    raise _err(errno.ENOTEMPTY, rel)
                del self.ports[o]
            self._save()

    def read(self, rel: str) -> str:
        with self._lock:
            k, o, leaf = self._resolve(rel)
            if k != "attr":
                raise _err(errno.EISDIR if k != "link" else errno.EINVAL, rel)
            if leaf == "revalidate_size":
                raise _err(errno.EACCES, rel)  # write-only attribute
            if o[0] == "ana":
                return "optimized\n"
            return self._attrs(o)[leaf] + "\n"

    def _attrs(self, o: tuple) -> dict[str, str]:
        if o[0] == "root":
            return self.root_attrs
        if o[0] == "host":
            return self.hosts[o[1]]
        if o[0] == "subsys":
            return self.subsystems[o[1]].attrs
        if o[0] == "ns":
            return self.subsystems[o[1]].namespaces[o[2]].attrs
        return self.ports[o[1]].attrs

    def write(self, rel: str, value: str) -> None:
        with self._lock:
            k, o, leaf = self._resolve(rel)
            if k != "attr":
                raise _err(errno.EISDIR if k != "link" else errno.EINVAL, rel)
            if o[0] == "ana":
                if value.strip("\n") not in ("optimized", "non-optimized", "inaccessible", "persistent-loss", "change"):
                    raise _err(errno.EINVAL, rel)
                return
            try:
                rule = _RULES[(o[0], leaf)]
            except KeyError:
                raise _err(errno.EINVAL, rel) from None
            try:
                rule(self, o, value)
            except OSError as e:
                raise _err(e.errno or errno.EINVAL, rel) from None
            self._save()

    def symlink(self, target_rel: str, rel: str) -> None:
        with self._lock:
            k, o, name = self._resolve_new(rel)
            if k != "group" or not isinstance(o, tuple) or o[0] not in ("allowed_hosts", "port_subsystems"):
                raise _err(errno.EPERM, rel)
            tk, to, _ = self._resolve(target_rel)
            if o[0] == "allowed_hosts":
                s = self.subsystems[o[1]]
                if tk != "host":
                    raise _err(errno.EINVAL, rel)
                if s.attrs["attr_allow_any_host"] == "1":
                    raise _err(errno.EINVAL, rel)
                if to in s.allowed.values():
                    raise _err(errno.EEXIST, rel)
                s.allowed[name] = to
            else:
                port = self.ports[o[1]]
                if tk != "subsys":
                    raise _err(errno.EINVAL, rel)
                if to in port.links.values():
                    raise _err(errno.EEXIST, rel)
                if not port.links:
                    self._enable_port(port, rel)
                port.links[name] = to
            self._save()

    def unlink(self, rel: str) -> None:
        with self._lock:
            k, o, leaf = self._resolve(rel)
            if k == "attr":
                raise _err(errno.EPERM, rel)
            if k != "link":
                raise _err(errno.EISDIR, rel)
            if o[0] == "allowed":
                del self.subsystems[o[1]].allowed[leaf]
            else:
                del self.ports[o[1]].links[leaf]
            self._save()

    def readlink(self, rel: str) -> str:
        with self._lock:
            k, o, leaf = self._resolve(rel)
            if k != "link":
                raise _err(errno.EINVAL, rel)
            if o[0] == "allowed":
                return f"hosts/{self.subsystems[o[1]].allowed[leaf]}"
            return f"subsystems/{self.ports[o[1]].links[leaf]}"

    # ---- kernel behaviour ----------------------------------------------------------------
    @staticmethod
    def _enable_port(port: _Port, rel: str) -> None:
        a = port.attrs
        if a["addr_trtype"] not in ("tcp", "loop"):
            raise _err(errno.EINVAL, rel)
        if a["addr_trtype"] == "tcp":
            if a["addr_adrfam"] not in ("ipv4", "ipv6"):
                raise _err(errno.EINVAL, rel)
            try:
                ip = ipaddress.ip_address(a["addr_traddr"])
                svc = int(a["addr_trsvcid"])
            except ValueError:
                raise _err(errno.EINVAL, rel) from None
            if ip.version != (4 if a["addr_adrfam"] == "ipv4" else 6) or not 0 <= svc <= 65535:
                raise _err(errno.EINVAL, rel)

    def _enable_ns(self, o: tuple) -> None:
        s = self.subsystems[o[1]]
        ns = s.namespaces[o[2]]
        if ns.enabled:
            return
        if sum(1 for n in s.namespaces.values() if n.enabled) >= MAX_NAMESPACES:
            raise _err(errno.EMFILE)
        path = ns.attrs["device_path"]
        if not path:
            raise _err(errno.EINVAL)
        st = os.stat(path)  # ENOENT etc. propagate, as from filp_open
        import stat as _stat

        if not _stat.S_ISBLK(st.st_mode):
            flags = os.O_RDWR | (0 if ns.attrs["buffered_io"] == "1" else getattr(os, "O_DIRECT", 0))
            fd = os.open(path, flags)  # the real filesystem decides: tmpfs EINVAL, read-only EROFS
            os.close(fd)
        ns.enabled = True
        ns.attrs["enable"] = "1"


def _ns_locked(fs: FakeConfigfs, o: tuple, code: int = errno.EBUSY) -> _Ns:
    ns = fs.subsystems[o[1]].namespaces[o[2]]
    if ns.enabled:
        raise _err(code)
    return ns


def _set_ns(attr: str, parse: Callable[[str], str], code: int = errno.EBUSY):
    def rule(fs: FakeConfigfs, o: tuple, v: str) -> None:
        ns = _ns_locked(fs, o, code)
        ns.attrs[attr] = parse(v)
    return rule


def _device_path(v: str) -> str:
    s = v.split("\n")[0]
    if not s:
        raise _err(errno.EINVAL)
    return s


def _ns_enable(fs: FakeConfigfs, o: tuple, v: str) -> None:
    if _kstrtobool(v):
        fs._enable_ns(o)
    else:
        ns = fs.subsystems[o[1]].namespaces[o[2]]
        ns.enabled = False
        ns.attrs["enable"] = "0"


def _ns_revalidate(fs: FakeConfigfs, o: tuple, v: str) -> None:
    if not _kstrtobool(v) or not fs.subsystems[o[1]].namespaces[o[2]].enabled:
        raise _err(errno.EINVAL)


def _ana_grpid(fs: FakeConfigfs, o: tuple, v: str) -> None:
    g = _kstrtou(v, 32)
    if not 1 <= g <= 128:
        raise _err(errno.EINVAL)
    fs.subsystems[o[1]].namespaces[o[2]].attrs["ana_grpid"] = str(g)


def _subsys(attr: str, parse: Callable[[FakeConfigfs, _Subsys, str], str]):
    def rule(fs: FakeConfigfs, o: tuple, v: str) -> None:
        s = fs.subsystems[o[1]]
        s.attrs[attr] = parse(fs, s, v)
    return rule


def _allow_any(fs: FakeConfigfs, s: _Subsys, v: str) -> str:
    on = _kstrtobool(v)
    if on and s.allowed:
        raise _err(errno.EINVAL)
    return "1" if on else "0"


def _version(fs: FakeConfigfs, s: _Subsys, v: str) -> str:
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", v)
    if not m:
        raise _err(errno.EINVAL)
    tertiary = int(m.group(3) or 0)
    return f"{int(m.group(1))}.{int(m.group(2))}" + (f".{tertiary}" if tertiary else "")


def _cntlid(which: str):
    def parse(fs: FakeConfigfs, s: _Subsys, v: str) -> str:
        n = _kstrtou(v, 16)
        lo, hi = int(s.attrs["attr_cntlid_min"]), int(s.attrs["attr_cntlid_max"])
        if n == 0 or (which == "min" and n > hi) or (which == "max" and n < lo):
            raise _err(errno.EINVAL)
        return str(n)
    return parse


def _qid_max(fs: FakeConfigfs, s: _Subsys, v: str) -> str:
    n = _kstrtou(v, 16)
    if not 1 <= n <= 128:
        raise _err(errno.EINVAL)
    return str(n)


def _oui(fs: FakeConfigfs, s: _Subsys, v: str) -> str:
    n = _kstrtou(v, 32)
    if n >= 0x1000000:
        raise _err(errno.EINVAL)
    return f"0x{n:06x}"


def _port(attr: str, parse: Callable[[_Port, str], str]):
    def rule(fs: FakeConfigfs, o: tuple, v: str) -> None:
        port = fs.ports[o[1]]
        if port.links:
            raise _err(errno.EACCES)
        port.attrs[attr] = parse(port, v)
    return rule


def _choice(*names: str):
    def parse(port: _Port, v: str) -> str:
        s = v.strip("\n")
        if s not in names:
            raise _err(errno.EINVAL)
        return s
    return parse


def _token(maxlen: int):
    def parse(port: _Port, v: str) -> str:
        if len(v) > maxlen or not v.split():
            raise _err(errno.EINVAL)
        return v.split()[0]
    return parse


def _trtype(port: _Port, v: str) -> str:
    s = _choice("rdma", "fc", "tcp", "loop")(port, v)
    if "addr_tsas" in port.attrs:
        port.attrs["addr_tsas"] = "none" if s == "tcp" else ("connected" if s == "rdma" else "reserved")
    return s


def _tsas(port: _Port, v: str) -> str:
    if port.attrs["addr_trtype"] != "tcp":
        raise _err(errno.EINVAL)
    s = _choice("none", "tls1.3")(port, v)
    port.attrs["addr_treq"] = "required" if s == "tls1.3" else "not specified"
    return s


def _int(port: _Port, v: str) -> str:
    try:
        return str(int(v.strip("\n"), 0))
    except ValueError:
        raise _err(errno.EINVAL) from None


def _host(attr: str):
    def rule(fs: FakeConfigfs, o: tuple, v: str) -> None:
        s = v.split("\n")[0]
        if attr in ("dhchap_key", "dhchap_ctrl_key"):
            m = re.match(r"^DHHC-1:(\d+):", s)
            if not m or int(m.group(1)) > 3:
                raise _err(errno.EINVAL)
        elif attr == "dhchap_hash":
            if s not in ("hmac(sha256)", "hmac(sha384)", "hmac(sha512)"):
                raise _err(errno.EINVAL)
        elif s not in ("null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"):
            raise _err(errno.EINVAL)
        fs.hosts[o[1]][attr] = s
    return rule


_RULES: dict[tuple[str, str], Callable[[FakeConfigfs, tuple, str], None]] = {
    ("root", "discovery_nqn"): lambda fs, o, v: fs.root_attrs.__setitem__("discovery_nqn", _ascii(v, 223)),
    ("ns", "device_path"): _set_ns("device_path", _device_path),
    ("ns", "device_uuid"): _set_ns("device_uuid", _parse_uuid),
    ("ns", "device_nguid"): _set_ns("device_nguid", _parse_nguid),
    ("ns", "buffered_io"): _set_ns("buffered_io", lambda v: "1" if _kstrtobool(v) else "0", errno.EINVAL),
    ("ns", "enable"): _ns_enable,
    ("ns", "ana_grpid"): _ana_grpid,
    ("ns", "revalidate_size"): _ns_revalidate,
    ("subsys", "attr_allow_any_host"): _subsys("attr_allow_any_host", _allow_any),
    ("subsys", "attr_version"): _subsys("attr_version", _version),
    ("subsys", "attr_serial"): _subsys("attr_serial", lambda fs, s, v: _ascii(v, 20)),
    ("subsys", "attr_model"): _subsys("attr_model", lambda fs, s, v: _ascii(v, 40)),
    ("subsys", "attr_firmware"): _subsys("attr_firmware", lambda fs, s, v: _ascii(v, 8)),
    ("subsys", "attr_cntlid_min"): _subsys("attr_cntlid_min", _cntlid("min")),
    ("subsys", "attr_cntlid_max"): _subsys("attr_cntlid_max", _cntlid("max")),
    ("subsys", "attr_qid_max"): _subsys("attr_qid_max", _qid_max),
    ("subsys", "attr_pi_enable"): _subsys("attr_pi_enable", lambda fs, s, v: "1" if _kstrtobool(v) else "0"),
    ("subsys", "attr_ieee_oui"): _subsys("attr_ieee_oui", _oui),
    ("port", "addr_adrfam"): _port("addr_adrfam", _choice("ipv4", "ipv6", "ib", "fc", "loop")),
    ("port", "addr_trtype"): _port("addr_trtype", _trtype),
    ("port", "addr_traddr"): _port("addr_traddr", _token(256)),
    ("port", "addr_trsvcid"): _port("addr_trsvcid", _token(32)),
    ("port", "addr_treq"): _port("addr_treq", _choice("not specified", "required", "not required")),
    ("port", "addr_tsas"): _port("addr_tsas", _tsas),
    ("port", "param_inline_data_size"): _port("param_inline_data_size", _int),
    ("port", "param_max_queue_size"): _port("param_max_queue_size", _int),
    ("port", "param_pi_enable"): _port("param_pi_enable", lambda p, v: "1" if _kstrtobool(v) else "0"),
    ("host", "dhchap_key"): _host("dhchap_key"),
    ("host", "dhchap_ctrl_key"): _host("dhchap_ctrl_key"),
    ("host", "dhchap_hash"): _host("dhchap_hash"),
    ("host", "dhchap_dhgroup"): _host("dhchap_dhgroup"),
}

"""Save and restore the target in nvmetcli's JSON format, so users can move between the tools.

Same keys as nvmetcli (`hosts`, `subsystems`, `ports`, `attr`, `device`, `addr`, `param`,
`allowed_hosts`, `namespaces`, `nsid`, `enable`, `ana_grpid`, `dhchap`, `portid`, `referrals`,
`ana_groups`): nvmetcli maps a group key plus a name onto the configfs file `<group>_<name>`
(`"device": {"path": ...}` is `device_path`). One pifarm addition, `"buffered_io"` on a
namespace, is ignored by nvmetcli; when it is missing pifarm probes the backing file instead.

Unlike nvmetcli, `restore` does not tear everything down and rebuild it: it reconciles, so a
restore of the current state changes nothing and connected hosts stay connected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pifarm.errors import UsageError
from pifarm.durable import atomic_write_json
from pifarm.target.configfs import Root
from pifarm.target.reconciler import Op, apply, diff
from pifarm.target.spec import (HostSpec, NamespaceSpec, PortSpec, Scope, SubsystemSpec, TargetSpec, observe,
                                supports_o_direct)

__all__ = ["dump", "to_spec", "from_spec", "save_file", "load_file", "restore_plan", "restore"]

# values the kernel starts with: not written on restore, so a save taken on one kernel restores
# on another that lacks the attribute (e.g. attr_pi_enable without CONFIG_BLK_DEV_INTEGRITY)
_DEFAULTS = {
    "attr_cntlid_min": "1", "attr_cntlid_max": "65519", "attr_model": "Linux", "attr_pi_enable": "0",
    "attr_qid_max": "128", "attr_version": "1.3", "attr_ieee_oui": "0x000000",
    "addr_treq": "not specified", "addr_tsas": ("none", "reserved"), "param_inline_data_size": ("-1", "16384"),
    "param_max_queue_size": ("-1", "1024"), "param_pi_enable": "0",
    "dhchap_key": "", "dhchap_ctrl_key": "", "dhchap_hash": "hmac(sha256)", "dhchap_dhgroup": ("null", "none"),
}


def _is_default(attr: str, value: str) -> bool:
    d = _DEFAULTS.get(attr)
    return d is not None and (value in d if isinstance(d, tuple) else value == d)


def _group(attrs: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) + 1:]: v for k, v in sorted(attrs.items()) if k.startswith(prefix + "_")}


def from_spec(spec: TargetSpec) -> dict[str, Any]:
    hosts = []
    for nqn, h in sorted(spec.hosts.items()):
        d: dict[str, Any] = {"nqn": nqn}
        dh = _group(dict(h.attrs), "dhchap")
        if dh:
            d["dhchap"] = dh
        hosts.append(d)
    subsystems = []
    for nqn, s in sorted(spec.subsystems.items()):
        nss = []
        for nsid, ns in sorted(s.namespaces.items()):
            a = dict(ns.attrs)
            grpid = int(a.get("ana_grpid", "1") or 1)
            n = {"nsid": nsid, "enable": 1 if ns.enabled else 0, "device": _group(a, "device"),
                 "ana_grpid": grpid, "ana": {"grpid": str(grpid)}}
            if "buffered_io" in a:
                n["buffered_io"] = a["buffered_io"]
            nss.append(n)
        subsystems.append({"nqn": nqn, "attr": _group(dict(s.attrs), "attr"), "allowed_hosts": sorted(s.allowed_hosts),
                           "namespaces": nss})
    ports = []
    for pid, p in sorted(spec.ports.items()):
        a = dict(p.attrs)
        ports.append({"portid": pid, "addr": _group(a, "addr"), "param": _group(a, "param"),
                      "subsystems": sorted(p.subsystems), "referrals": [],
                      "ana_groups": [{"grpid": 1, "ana": {"state": "optimized"}}]})
    return {"hosts": hosts, "subsystems": subsystems, "ports": ports}


def dump(root: Root) -> dict[str, Any]:
    """The live tree as nvmetcli would save it."""
    return from_spec(observe(root))


def _need(d: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise UsageError(f"nvmetcli JSON: {where} has no {key!r}")
    v = d[key]
    if kind is int and isinstance(v, str) and v.isdigit():
        v = int(v)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise UsageError(f"nvmetcli JSON: {where} {key!r} must be a {kind.__name__}, got {v!r}")
    return v


def _attrs(d: dict, groups: tuple[str, ...], where: str) -> dict[str, str]:
    out = {}
    for g in groups:
        sub = d.get(g, {}) or {}
        if not isinstance(sub, dict):
            raise UsageError(f"nvmetcli JSON: {where} {g!r} must be an object")
        for k, v in sub.items():
            if not isinstance(k, str) or "/" in k or not isinstance(v, (str, int)) or isinstance(v, bool):
                raise UsageError(f"nvmetcli JSON: {where} {g}.{k} must be a string or integer")
            out[f"{g}_{k}"] = str(v)
    return {k: v for k, v in out.items() if not _is_default(k, v)}


def to_spec(doc: Any) -> TargetSpec:
    """Parse (and check) an nvmetcli JSON document into the desired state."""
    if not isinstance(doc, dict):
        raise UsageError("nvmetcli JSON: the top level must be an object with hosts, subsystems and ports")
    hosts = {}
    for i, h in enumerate(doc.get("hosts") or []):
        nqn = _need(h, "nqn", str, f"hosts[{i}]")
        hosts[nqn] = HostSpec(nqn, _attrs(h, ("dhchap",), f"host {nqn}"))
    subsystems = {}
    for i, s in enumerate(doc.get("subsystems") or []):
        nqn = _need(s, "nqn", str, f"subsystems[{i}]")
        nss = {}
        for j, n in enumerate(s.get("namespaces") or []):
            where = f"subsystem {nqn} namespaces[{j}]"
            nsid = _need(n, "nsid", int, where)
            a = _attrs(n, ("device",), where)
            grpid = n.get("ana_grpid", (n.get("ana") or {}).get("grpid", 1))
            if str(grpid) != "1":
                a["ana_grpid"] = str(grpid)
            if "buffered_io" in n:
                a["buffered_io"] = "1" if str(n["buffered_io"]) in ("1", "true", "True") else "0"
            elif a.get("device_path") and os.path.isfile(a["device_path"]) and not supports_o_direct(a["device_path"]):
                a["buffered_io"] = "1"  # an nvmetcli save of a tmpfs-backed namespace
            nss[nsid] = NamespaceSpec(nsid, a, bool(int(n.get("enable", 1) or 0)))
        allowed = s.get("allowed_hosts") or []
        if not isinstance(allowed, list) or not all(isinstance(x, str) for x in allowed):
            raise UsageError(f"nvmetcli JSON: subsystem {nqn} allowed_hosts must be a list of NQNs")
        missing = [x for x in allowed if x not in hosts]
        if missing:
            raise UsageError(f"nvmetcli JSON: subsystem {nqn} allows host {missing[0]} that is not under hosts")
        attrs = _attrs(s, ("attr",), f"subsystem {nqn}")
        attrs.setdefault("attr_allow_any_host", "0")
        subsystems[nqn] = SubsystemSpec(nqn, attrs, nss, frozenset(allowed))
    ports = {}
    for i, p in enumerate(doc.get("ports") or []):
        pid = _need(p, "portid", int, f"ports[{i}]")
        subs = p.get("subsystems") or []
        missing = [x for x in subs if x not in subsystems]
        if missing:
            raise UsageError(f"nvmetcli JSON: port {pid} links subsystem {missing[0]} that is not under subsystems")
        a = _attrs(p, ("addr", "param"), f"port {pid}")
        # the transport fills param_inline_data_size in when the port is enabled: never a wish
        ports[pid] = PortSpec(pid, a, frozenset(subs))
    return TargetSpec(hosts, subsystems, ports)


def save_file(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write atomically: a process-unique temp file, fsync, rename, fsync the directory."""
    return atomic_write_json(path, doc, mode=0o600, indent=2)  # 0600: may hold DH-HMAC-CHAP secrets


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise UsageError(f"{path} does not exist") from e
    except ValueError as e:
        raise UsageError(f"{path} is not JSON: {e}") from e


def restore_plan(root: Root, doc: dict[str, Any], scope: Scope | None = None) -> list[Op]:
    return diff(to_spec(doc), observe(root), scope=scope)


def restore(root: Root, doc: dict[str, Any], log_step=None, scope: Scope | None = None) -> int:
    """Make the live tree equal the saved one. Everything else is removed, as with nvmetcli,
    unless `scope` limits what may be touched (objects of the document are always in scope)."""
    return apply(root, restore_plan(root, doc, scope), log_step)

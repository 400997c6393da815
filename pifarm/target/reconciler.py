"""Reconcile configfs with the desired state: `plan = diff(desired, observe(root))`, then `apply`.

`diff` is pure and returns ordered frozen `Op`s in the order the kernel requires:

    teardown  1. port links that must go (all of a port whose address changes: linking locks it)
              2. allowed_hosts links that must go
              3. namespaces: enable=0 + rmdir the retired; enable=0 where a locked attr changes
              4. rmdir subsystems, ports, hosts no longer wanted (only pifarm's, see `Scope`)
    build     5. hosts: mkdir, dhchap_hash/dhgroup, then the keys
              6. subsystems: mkdir, attr_allow_any_host=0 (before any host link), other attrs
              7. namespaces: mkdir, device_path/uuid/nguid/buffered_io, then enable=1
              8. allowed_hosts links
              9. ports: mkdir, addr_trtype first, the other addr_*/param_*, then the links

Only differences produce steps, so adding a version adds one namespace and never touches the
others, the port or the connections; running twice does nothing the second time. `apply` stops
at the first refusal; the next run re-observes and finishes the job.
"""

from __future__ import annotations

import errno
import logging
import posixpath
from dataclasses import dataclass
from typing import Callable, Iterable

from pifarm.errors import Conflict, ConfigfsError
from pifarm.target.configfs import SECRET_ATTRS, Root, configfs_error
from pifarm.target.dhchap import redact
from pifarm.target.spec import LOCKED_NS_ATTRS, NamespaceSpec, Scope, TargetSpec

__all__ = ["Op", "diff", "apply", "render"]

log = logging.getLogger(__name__)

_SECRET_ATTRS = SECRET_ATTRS
_HOST_ORDER = ("dhchap_hash", "dhchap_dhgroup", "dhchap_key", "dhchap_ctrl_key")
_PORT_FIRST = ("addr_trtype", "addr_adrfam", "addr_traddr", "addr_trsvcid")
_SUBSYS_FIRST = ("attr_allow_any_host",)
_SUBSYS_DEFAULTS = {"attr_cntlid_min": "1", "attr_cntlid_max": "65519"}  # a new subsystem's


@dataclass(frozen=True)
class Op:
    """One kernel step. action: mkdir | rmdir | write | link | unlink; paths relative to the root."""

    action: str
    path: str
    value: str = ""

    def __str__(self) -> str:
        if self.action == "write":
            shown = "<secret>" if posixpath.basename(self.path) in _SECRET_ATTRS else self.value
            return f"write  {self.path} = {shown}"
        if self.action == "link":
            return f"link   {self.path} -> {self.value}"
        return f"{self.action:<6} {self.path}"

    def run(self, root: Root) -> None:
        b = root.backend
        try:
            if self.action == "mkdir":
                b.mkdir(self.path)
            elif self.action == "rmdir":
                b.rmdir(self.path)
            elif self.action == "write":
                b.write(self.path, self.value)
            elif self.action == "link":
                b.symlink(self.value, self.path)
            elif self.action == "unlink":
                b.unlink(self.path)
            else:
                raise ValueError(self.action)
        except OSError as e:
            if self.action == "write" and e.errno == errno.ENOENT and posixpath.basename(self.path).startswith("dhchap_"):
                raise ConfigfsError(
                    f"this kernel has no DH-HMAC-CHAP ({b.label}/{self.path} does not exist): refusing to export "
                    f"without authentication; use a kernel with CONFIG_NVME_TARGET_AUTH (e.g. Debian 13's 6.12) "
                    f"or allow the host without --dhchap", self.path) from e
            op = {"link": "symlink"}.get(self.action, self.action)
            raise configfs_error(op, b.label, self.path, e, self.value if self.action == "write" else None) from e


def _norm(attr: str, value: str) -> str:
    if attr in ("device_uuid", "device_nguid"):
        return value.strip().lower()
    return value.strip()


def _changed(want: dict, have: dict, order: Iterable[str] = ()) -> list[tuple[str, str]]:
    keys = [k for k in order if k in want] + sorted(k for k in want if k not in order)
    return [(k, want[k]) for k in keys if _norm(k, want[k]) != _norm(k, have.get(k, ""))]


def diff(desired: TargetSpec, observed: TargetSpec, scope: Scope | None = None) -> list[Op]:
    """The ordered steps that turn `observed` into `desired`.

    Objects outside `desired` are removed only if `scope` names them (pifarm created them);
    `scope=None` treats the whole tree as ours (`restore`, `clear`).
    """
    if observed.auth is False and any(any(k.startswith("dhchap_") for k in h.attrs) for h in desired.hosts.values()):
        raise Conflict("DH-HMAC-CHAP is configured but this kernel has no hosts/<nqn>/dhchap_key: refusing to export "
                       "without authentication; use a kernel with CONFIG_NVME_TARGET_AUTH (e.g. Debian 13's 6.12)")

    def mine(kind: str, name) -> bool:
        return scope is None or name in getattr(scope, kind) or name in getattr(desired, kind)

    teardown: list[Op] = []
    build: list[Op] = []

    # 1. port links (and a port whose address changes loses all its links first)
    relink: dict[int, set[str]] = {}
    for pid, have in observed.ports.items():
        want = desired.ports.get(pid)
        if not mine("ports", pid):
            # a foreign port linking one of our subsystems that must go
            for nqn in sorted(have.subsystems):
                if nqn in observed.subsystems and mine("subsystems", nqn) and nqn not in desired.subsystems:
                    teardown.append(Op("unlink", f"ports/{pid}/subsystems/{nqn}"))
            continue
        readdr = want is not None and bool(_changed(dict(want.attrs), dict(have.attrs)))
        keep = set() if (want is None or readdr) else set(want.subsystems)
        for nqn in sorted(have.subsystems - keep):
            teardown.append(Op("unlink", f"ports/{pid}/subsystems/{nqn}"))
        relink[pid] = set(have.subsystems & keep)

    # 2. allowed_hosts links; 3. namespaces
    disabled: set[tuple[str, int]] = set()
    for nqn, have in observed.subsystems.items():
        if not mine("subsystems", nqn):
            continue
        want = desired.subsystems.get(nqn)
        keep = set(want.allowed_hosts) if want else set()
        recreate = {h for h in keep & have.allowed_hosts if _host_needs_recreate(desired, observed, h)}
        for h in sorted(have.allowed_hosts - (keep - recreate)):
            teardown.append(Op("unlink", f"subsystems/{nqn}/allowed_hosts/{h}"))
    for nqn, have in observed.subsystems.items():
        if not mine("subsystems", nqn):
            continue
        want = desired.subsystems.get(nqn)
        for nsid, ns in sorted(have.namespaces.items()):
            wns = want.namespaces.get(nsid) if want else None
            base = f"subsystems/{nqn}/namespaces/{nsid}"
            if wns is None:
                if ns.enabled:
                    teardown.append(Op("write", f"{base}/enable", "0"))
                teardown.append(Op("rmdir", base))
            elif ns.enabled and (not wns.enabled or _locked_change(wns, ns)):
                teardown.append(Op("write", f"{base}/enable", "0"))
                disabled.add((nqn, nsid))

    # 4. rmdir what is no longer wanted
    for nqn in sorted(observed.subsystems):
        if mine("subsystems", nqn) and nqn not in desired.subsystems:
            teardown.append(Op("rmdir", f"subsystems/{nqn}"))
    for pid in sorted(observed.ports):
        if mine("ports", pid) and pid not in desired.ports:
            teardown.append(Op("rmdir", f"ports/{pid}"))
    foreign_refs = {h for nqn, s in observed.subsystems.items() if not mine("subsystems", nqn) for h in s.allowed_hosts}
    recreate_hosts = set()
    for h in sorted(observed.hosts):
        if not mine("hosts", h):
            continue
        gone = h not in desired.hosts
        if (gone or _host_needs_recreate(desired, observed, h)) and h not in foreign_refs:
            teardown.append(Op("rmdir", f"hosts/{h}"))
            if not gone:
                recreate_hosts.add(h)

    # 5. hosts
    for h, want in sorted(desired.hosts.items()):
        have = observed.hosts.get(h)
        fresh = have is None or h in recreate_hosts
        if fresh:
            build.append(Op("mkdir", f"hosts/{h}"))
        for k, v in _changed(dict(want.attrs), {} if fresh else dict(have.attrs), _HOST_ORDER):
            build.append(Op("write", f"hosts/{h}/{k}", v))

    # 6.-8. subsystems, namespaces, host links
    for nqn, want in sorted(desired.subsystems.items()):
        have = observed.subsystems.get(nqn)
        if have is None:
            build.append(Op("mkdir", f"subsystems/{nqn}"))
        hattrs = dict(have.attrs) if have else dict(_SUBSYS_DEFAULTS)  # what mkdir gives
        for k, v in _changed(dict(want.attrs), hattrs, _subsys_order(want.attrs, hattrs)):
            build.append(Op("write", f"subsystems/{nqn}/{k}", v))
        for nsid, wns in sorted(want.namespaces.items()):
            base = f"subsystems/{nqn}/namespaces/{nsid}"
            hns = have.namespaces.get(nsid) if have else None
            if hns is None:
                build.append(Op("mkdir", base))
            for k, v in _changed(dict(wns.attrs), dict(hns.attrs) if hns else {}, LOCKED_NS_ATTRS):
                build.append(Op("write", f"{base}/{k}", v))
            was_on = hns is not None and hns.enabled and (nqn, nsid) not in disabled
            if wns.enabled and not was_on:
                build.append(Op("write", f"{base}/enable", "1"))
        linked = set(have.allowed_hosts) if have else set()
        for h in sorted(want.allowed_hosts):
            if h not in linked or h in recreate_hosts or _host_needs_recreate(desired, observed, h):
                build.append(Op("link", f"subsystems/{nqn}/allowed_hosts/{h}", f"hosts/{h}"))

    # 9. ports
    for pid, want in sorted(desired.ports.items()):
        have = observed.ports.get(pid)
        if have is None:
            build.append(Op("mkdir", f"ports/{pid}"))
        for k, v in _changed(dict(want.attrs), dict(have.attrs) if have else {}, _PORT_FIRST):
            build.append(Op("write", f"ports/{pid}/{k}", v))
        for nqn in sorted(want.subsystems - relink.get(pid, set())):
            build.append(Op("link", f"ports/{pid}/subsystems/{nqn}", f"subsystems/{nqn}"))
    return teardown + build


def _subsys_order(want, have) -> tuple[str, ...]:
    """The kernel keeps cntlid_min < cntlid_max at every write: lower bound first unless the new
    minimum is not below the current maximum (a range moved up past it), then the upper first."""
    try:
        min_first = int(want.get("attr_cntlid_min", 1)) < int(have.get("attr_cntlid_max", 65519))
    except ValueError:
        min_first = True
    pair = ("attr_cntlid_min", "attr_cntlid_max") if min_first else ("attr_cntlid_max", "attr_cntlid_min")
    return (*_SUBSYS_FIRST, *pair)


def _locked_change(want: NamespaceSpec, have: NamespaceSpec) -> bool:
    return any(_norm(k, want.attrs[k]) != _norm(k, have.attrs.get(k, "")) for k in LOCKED_NS_ATTRS if k in want.attrs)


def _host_needs_recreate(desired: TargetSpec, observed: TargetSpec, nqn: str) -> bool:
    """A key the host must lose can only be dropped by recreating the host (the kernel has no
    reliable way to clear a written dhchap key)."""
    want, have = desired.hosts.get(nqn), observed.hosts.get(nqn)
    if want is None or have is None:
        return False
    return any(have.attrs.get(k) and k not in want.attrs for k in _SECRET_ATTRS)


def apply(root: Root, ops: list[Op], log_step: Callable[[str], None] | None = None) -> int:
    """Run the steps in order; log each; stop at the first refusal (the next run resumes)."""
    for i, op in enumerate(ops, 1):
        try:
            op.run(root)
        except ConfigfsError as e:
            # redact: whatever the kernel echoed, a key must not reach last_error, /health or logs
            raise ConfigfsError(redact(f"step {i}/{len(ops)} ({op}): {e}; fix it and run `pifarm target apply` "
                                       f"again: it resumes from the live state"), e.path) from e
        line = f"[{i}/{len(ops)}] {op}"
        log.info("configfs: %s", line)
        if log_step:
            log_step(line)
    return len(ops)


def render(ops: list[Op]) -> str:
    return "\n".join(str(o) for o in ops) if ops else "nothing to do: configfs matches the desired state"

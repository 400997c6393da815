"""The aggregator's kernel target, end to end: served versions -> volumes -> desired -> configfs.

    t = KernelTarget(settings, data_dir)          # nothing touched yet
    exports = VolumeBuilder(registry, t.volume_dir).sync()
    ops = t.apply(exports)                          # or t.plan(exports) for a dry run

State pifarm keeps beside the registry, in `<data_dir>/target/`: nsids.json (stable namespace
ids), hosts.json (allow list + DH-HMAC-CHAP secrets, 0600), scope.json (which configfs objects
pifarm created, so it never removes anyone else's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pifarm.errors import ConfigfsError
from pifarm.signed.manifest import namespace_uuid
from pifarm.target.configfs import Root
from pifarm.target.hosts import HostStore
from pifarm.target.nsids import NsidTable
from pifarm.target.reconciler import Op, apply, diff
from pifarm.target.settings import TargetSettings
from pifarm.target.spec import Export, Scope, TargetSpec, build_spec, default_nqn, load_scope, observe, save_scope
from pifarm.target.volumes import volume_name

__all__ = ["KernelTarget", "planned_exports"]

PROBE_NQN = "nqn.2014-08.org.pifarm:probe-auth"


def planned_exports(served: Iterable[Any], volume_dir: str | os.PathLike) -> list[Export]:
    """Exports for served versions without building anything (dry runs)."""
    d = Path(volume_dir)
    return [Export(sv.name, sv.version, sv.manifest_digest, str(d / volume_name(sv.name, sv.version))) for sv in served]


class KernelTarget:
    """`open_root` turns `[target] configfs_root` into a Root; the appliance passes one that also
    knows the `fake:FILE` test double (this package may not import it)."""

    def __init__(self, settings: TargetSettings, data_dir: str | os.PathLike, root: Root | None = None,
                 open_root: Callable[[str], Root] = Root.at):
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.state_dir = self.data_dir / "target"
        self.volume_dir = Path(settings.volume_dir) if settings.volume_dir else self.data_dir / "volumes"
        self.nqn = settings.subsystem_nqn or default_nqn()
        self.nsids = NsidTable(self.state_dir / "nsids.json")
        self.hosts = HostStore(self.state_dir / "hosts.json")
        self._scope_path = self.state_dir / "scope.json"
        self._root = root
        self._open_root = open_root

    def configfs_present(self) -> bool:
        """Is there an nvmet tree to manage (module loaded, configfs mounted, or a fake)?"""
        try:
            self.root
        except ConfigfsError:  # Root refuses a directory without subsystems/: nvmet is not there
            return False
        return True

    @property
    def root(self) -> Root:
        if self._root is None:
            self._root = self._open_root(self.settings.configfs_root)
        return self._root

    def auth_supported(self) -> bool | None:
        """Does the kernel target do DH-HMAC-CHAP (CONFIG_NVME_TARGET_AUTH)? None without a
        kernel target. Read from an existing host; with none, from a probe host made and removed
        at once (only auth-capable kernels give a host a `dhchap_key` attribute)."""
        if not self.configfs_present():
            return None
        observed = observe(self.root)
        if observed.auth is not None:
            return observed.auth
        backend, probe = self.root.backend, f"hosts/{PROBE_NQN}"
        try:
            backend.mkdir(probe)
        except OSError as e:
            raise ConfigfsError(f"cannot probe DH-HMAC-CHAP support ({backend.label}/{probe}): {e.strerror or e}") from e
        try:
            return "dhchap_key" in backend.listdir(probe)
        finally:
            backend.rmdir(probe)

    def allowed_hosts(self, extra: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, str]]:
        """Config hosts < node inventory (`extra`) < the allow list (which carries the secrets)."""
        out: dict[str, dict[str, str]] = {h: {} for h in self.settings.allowed_hosts}
        out.update({k: dict(v) for k, v in (extra or {}).items()})
        out.update(self.hosts.load())
        return out

    def desired(self, exports: list[Export], observed: TargetSpec | None = None, *, persist: bool = True,
                extra_hosts: Mapping[str, Mapping[str, str]] | None = None) -> TargetSpec:
        observed = observed if observed is not None else observe(self.root)
        live = observed.subsystems.get(self.nqn)
        # the registry's namespace ids first (every aggregator of a shared bucket exports a version
        # under the same NSID, so the host's native multipath sees two paths to one namespace);
        # an nsid live in configfs wins over it: nodes are connected to that one
        adopt = {e.manifest_digest: e.nsid for e in exports if getattr(e, "nsid", None)}
        if live:
            by_uuid = {ns.attrs.get("device_uuid", "").lower(): nsid for nsid, ns in live.namespaces.items()}
            for e in exports:
                nsid = by_uuid.get(str(namespace_uuid(e.manifest_digest)))
                if nsid is not None:
                    adopt[e.manifest_digest] = nsid
        wanted = [(e.key, e.manifest_digest) for e in exports]
        nsids = self.nsids.sync(wanted, adopt) if persist else self.nsids.preview(wanted, adopt)
        ports = {i + 1: (addr, self.settings.trsvcid) for i, addr in enumerate(self.settings.addresses)}
        return build_spec(subsystem_nqn=self.nqn, exports=exports, nsids=nsids, ports=ports,
                          hosts=self.allowed_hosts(extra_hosts), buffered_io=self.settings.buffered_io_choice,
                          cntlid=(self.settings.cntlid_min, self.settings.cntlid_max))

    def plan(self, exports: list[Export], extra_hosts=None) -> list[Op]:
        observed = observe(self.root)
        want = self.desired(exports, observed, persist=False, extra_hosts=extra_hosts)
        return diff(want, observed, load_scope(self._scope_path) | Scope.of(want))

    def apply(self, exports: list[Export], log_step: Callable[[str], None] | None = None, extra_hosts=None) -> list[Op]:
        observed = observe(self.root)
        want = self.desired(exports, observed, extra_hosts=extra_hosts)
        owned = load_scope(self._scope_path) | Scope.of(want)
        ops = diff(want, observed, owned)
        save_scope(self._scope_path, owned)  # before any step: a crash half-way still knows what is ours
        apply(self.root, ops, log_step)
        save_scope(self._scope_path, Scope.of(want))
        return ops

    def status(self) -> dict[str, Any]:
        observed = observe(self.root)
        sub = observed.subsystems.get(self.nqn)
        return {
            "configfs_root": self.root.backend.label,
            "subsystem": self.nqn,
            "present": sub is not None,
            "dhchap_supported": observed.auth,
            "allowed_hosts": sorted(sub.allowed_hosts) if sub else [],
            "allow_any_host": sub.attrs.get("attr_allow_any_host") if sub else None,
            "namespaces": [
                {"nsid": nsid, "enabled": ns.enabled, "device_path": ns.attrs.get("device_path", ""),
                 "uuid": ns.attrs.get("device_uuid", ""), "buffered_io": ns.attrs.get("buffered_io", "")}
                for nsid, ns in sorted(sub.namespaces.items())] if sub else [],
            "ports": [
                {"portid": pid, "trtype": p.attrs.get("addr_trtype", ""), "traddr": p.attrs.get("addr_traddr", ""),
                 "trsvcid": p.attrs.get("addr_trsvcid", ""), "linked": self.nqn in p.subsystems}
                for pid, p in sorted(observed.ports.items())],
            "volumes": sorted(p.name for p in self.volume_dir.glob("*.vol")) if self.volume_dir.is_dir() else [],
        }

    def deny_host(self, nqn: str) -> None:
        """Drop `nqn` from the allow list and claim it, so the next apply removes its link and object."""
        self.hosts.deny(nqn)
        save_scope(self._scope_path, load_scope(self._scope_path) | Scope(hosts=frozenset({nqn})))

    def restore(self, doc: dict[str, Any], dry_run: bool = False,
                log_step: Callable[[str], None] | None = None) -> list[Op]:
        """nvmetcli JSON -> the live tree (reconciled); what it restores becomes pifarm's to manage."""
        from pifarm.target.nvmetcli_json import to_spec

        want = to_spec(doc)
        ops = diff(want, observe(self.root), scope=None)
        if not dry_run:
            save_scope(self._scope_path, load_scope(self._scope_path) | Scope.of(want))
            apply(self.root, ops, log_step)
        return ops

    def clear_plan(self) -> list[Op]:
        """Everything in the tree goes, like `nvmetcli clear`."""
        return diff(TargetSpec(), observe(self.root), scope=None)

    def clear(self, log_step: Callable[[str], None] | None = None) -> list[Op]:
        ops = self.clear_plan()
        apply(self.root, ops, log_step)
        save_scope(self._scope_path, Scope())
        return ops

"""`pifarm target ...` (the kernel NVMe/TCP target through configfs, and `target serve-userspace`,
the read-only userspace target) and `pifarm volume ...`.

Target commands read the aggregator's config like `pifarm aggregator run` (`--config F`, or
`--data-dir D` with defaults); `[target] configfs_root` picks the tree (`fake:FILE` for a dry
in-memory one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pifarm.appliance.cli._output import echo_json
from pifarm.appliance.cli._secrets import secret_options
from pifarm.errors import UsageError

NVME_PORT = 4420


def _options(f):
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Aggregator data dir (registry, volumes, target state).")(f)
    f = click.option("--config", type=click.Path(dir_okay=False), default=None, help="aggregator.toml")(f)
    return f


class _Ctx:
    """Settings, registry and target opened lazily, so `status` needs no registry."""

    def __init__(self, config: str | None, data_dir: str | None):
        from pifarm.appliance.config import load_aggregator_config

        self.config = load_aggregator_config(config, data_dir=data_dir)
        self.data_dir = Path(self.config.registry.data_dir)
        self._registry = None
        self._target = None

    @property
    def registry(self):
        if self._registry is None:
            from pifarm.registry.service import Registry

            if not (self.data_dir / "registry.db").exists():
                raise UsageError(f"no registry in {self.data_dir}: pass --data-dir or --config of the aggregator")
            self._registry = Registry.open(self.data_dir, self.config, readonly=True)
        return self._registry

    @property
    def target(self):
        if self._target is None:
            from pifarm.appliance.target_root import kernel_target

            self._target = kernel_target(self.config.target, self.data_dir)
        return self._target

    def built_exports(self):
        from pifarm.target.volumes import VolumeBuilder

        return VolumeBuilder(self.registry, self.target.volume_dir).sync(progress=lambda m: click.echo(f"volume: {m}"))

    def planned_exports(self):
        from pifarm.target.exporter import planned_exports

        return planned_exports(self.registry.served_versions(), self.target.volume_dir)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def _with_ctx(fn):
    def run(config, data_dir, **kw):
        ctx = _Ctx(config, data_dir)
        try:
            return fn(ctx, **kw)
        finally:
            ctx.close()
    return run


def _print_plan(ops, empty: str = "nothing to do: configfs matches the desired state") -> None:
    from pifarm.target.reconciler import render

    click.echo(render(ops) if ops else empty)


@click.group("target")
def target() -> None:
    """The kernel NVMe/TCP target (nvmet through configfs): one namespace per served version."""


@target.command("plan")
@_options
def plan_cmd(config, data_dir) -> None:
    """Dry run: the configfs steps `apply` would take."""
    def go(ctx):
        _print_plan(ctx.target.plan(ctx.planned_exports()))
    _with_ctx(go)(config, data_dir)


@target.command("apply")
@_options
def apply_cmd(config, data_dir) -> None:
    """Build missing volumes and reconcile configfs (only what differs, in kernel order)."""
    def go(ctx):
        ops = ctx.target.apply(ctx.built_exports(), log_step=click.echo)
        if not ops:
            click.echo("nothing to do: configfs matches the desired state")
    _with_ctx(go)(config, data_dir)


@target.command("status")
@click.option("--json", "as_json", is_flag=True)
@_options
def status_cmd(as_json, config, data_dir) -> None:
    """What the live configfs tree exports."""
    def go(ctx):
        st = ctx.target.status()
        if as_json:
            echo_json(st, indent=2)
            return
        _print_status(st)
    _with_ctx(go)(config, data_dir)


@target.command("allow-host")
@click.argument("nqn")
@click.option("--dhchap", is_flag=True, help="Require DH-HMAC-CHAP: generate the host's secret.")
@click.option("--bidirectional", is_flag=True, help="Also generate a controller secret (mutual auth).")
@click.option("--hmac", type=click.IntRange(0, 3), default=1, show_default=True,
              help="Key transform hash: 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512.")
@click.option("--dhgroup", default="null", show_default=True, help="null, ffdhe2048 ... ffdhe8192")
@secret_options("key", "PIFARM_DHCHAP_KEY", "Use this DHHC-1 secret instead of generating one.")
@click.option("--apply/--no-apply", "do_apply", default=True, show_default=True)
@_options
def allow_host_cmd(nqn, dhchap, bidirectional, hmac, dhgroup, key, do_apply, config, data_dir) -> None:
    """Allow host NQN to connect (optionally with DH-HMAC-CHAP)."""
    def go(ctx):
        attrs = ctx.target.hosts.allow(nqn, dhchap=dhchap, bidirectional=bidirectional, hmac=hmac,
                                       dhgroup=dhgroup, key=key)
        click.echo(f"allowed {nqn}")
        if attrs.get("dhchap_key"):
            # a file on the node, not an nvme-cli argument (argv is readable by every local user)
            click.echo(f"host secret (put it in the node's /etc/nvme/dhchap-key, mode 0600, named by "
                       f"[[sources]] options.dhchap_secret_file): {attrs['dhchap_key']}")
        if attrs.get("dhchap_ctrl_key"):
            click.echo(f"controller secret (options.dhchap_ctrl_secret_file on the node): {attrs['dhchap_ctrl_key']}")
        if do_apply:
            ctx.target.apply(ctx.built_exports(), log_step=click.echo)
    _with_ctx(go)(config, data_dir)


@target.command("deny-host")
@click.argument("nqn")
@click.option("--apply/--no-apply", "do_apply", default=True, show_default=True)
@_options
def deny_host_cmd(nqn, do_apply, config, data_dir) -> None:
    """Remove host NQN from the allow list (its connections are dropped by the kernel)."""
    def go(ctx):
        ctx.target.deny_host(nqn)
        click.echo(f"denied {nqn}")
        if do_apply:
            ctx.target.apply(ctx.built_exports(), log_step=click.echo)
    _with_ctx(go)(config, data_dir)


@target.command("save")
@click.argument("file", type=click.Path(dir_okay=False))
@_options
def save_cmd(file, config, data_dir) -> None:
    """Save the live tree as nvmetcli JSON (mode 0600: it may hold DH-HMAC-CHAP secrets)."""
    from pifarm.target.nvmetcli_json import dump, save_file

    def go(ctx):
        p = save_file(file, dump(ctx.target.root))
        click.echo(f"saved {p}")
    _with_ctx(go)(config, data_dir)


@target.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only print the steps.")
@_options
def restore_cmd(file, dry_run, config, data_dir) -> None:
    """Make the live tree equal an nvmetcli JSON file (reconciled, not torn down and rebuilt)."""
    from pifarm.target.nvmetcli_json import load_file

    def go(ctx):
        ops = ctx.target.restore(load_file(file), dry_run=dry_run, log_step=click.echo)
        if dry_run or not ops:
            _print_plan(ops)
    _with_ctx(go)(config, data_dir)


@target.command("clear")
@click.option("--dry-run", is_flag=True, help="Only print the steps.")
@_options
def clear_cmd(dry_run, config, data_dir) -> None:
    """Remove every port, subsystem and host from the tree (like `nvmetcli clear`)."""
    def go(ctx):
        if dry_run:
            _print_plan(ctx.target.clear_plan(), "nothing to do: the tree is empty")
            return
        ops = ctx.target.clear(click.echo)
        if not ops:
            click.echo("nothing to do: the tree is empty")
    _with_ctx(go)(config, data_dir)


@target.command("serve-userspace")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True,
              help="Directory holding the volume files to export (searched recursively, rescanned every 2 s).")
@click.option("--listen", default=f"127.0.0.1:{NVME_PORT}", show_default=True, help="HOST:PORT to listen on.")
@click.option("--subnqn", default=None, help="Subsystem NQN (default: derived from the host name).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Host NQN allowed to connect (repeatable).")
@click.option("--allow-any-host", is_flag=True, help="Let any host connect (only for demos on a closed network).")
@click.option("--max-connections", type=click.IntRange(1), default=64, show_default=True,
              help="Queues (TCP connections) at once; more are closed at accept.")
@click.option("--mdts", type=click.IntRange(1, 12), default=8, show_default=True,
              help="Largest transfer per command: 4 KiB * 2^MDTS (8 = 1 MiB).")
@click.option("--metrics-listen", default=None, help="HOST:PORT for Prometheus metrics (limit hits).")
def serve_userspace(data_dir: Path, listen: str, subnqn: str | None, allow_hosts: tuple[str, ...],
                    allow_any_host: bool, max_connections: int, mdts: int, metrics_listen: str | None) -> None:
    """Export model volumes READ-ONLY over userspace NVMe/TCP (for hosts without kernel nvmet)."""
    from pifarm.initiator.nvme_tcp import parse_address
    from pifarm.target.userspace import default_nqn, directory_exports, serve

    host, port = parse_address(listen, NVME_PORT)
    if not allow_hosts and not allow_any_host:
        raise UsageError("no host may connect: pass --allow-host NQN (repeatable) or --allow-any-host")
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory")
    if not data_dir.exists():
        click.echo(f"warning: {data_dir} does not exist yet; its volumes are exported once it does", err=True)
    nqn = subnqn or default_nqn()
    config = directory_exports(data_dir, nqn, frozenset(allow_hosts), allow_any_host=allow_any_host,
                               host=host, port=port, max_connections=max_connections, mdts=mdts)
    first = config()
    if metrics_listen:
        from prometheus_client import start_http_server

        import pifarm.target.userspace._limits  # noqa: F401  (registers pifarm_nvme_target_limit_hits_total)
        mhost, mport = parse_address(metrics_listen, 9471)
        start_http_server(mport, mhost)
    for ns in first.subsystems[0].namespaces:
        click.echo(f"nsid {ns.nsid}: {ns.path} uuid {ns.uuid}", err=True)
    click.echo(f"serving {nqn} on {host}:{port} (read-only, {len(first.subsystems[0].namespaces)} volumes; "
               f"new volumes under {data_dir} appear within seconds)", err=True)
    try:
        serve(first, rescan=config)
    except KeyboardInterrupt:
        pass


@click.group("volume")
def volume() -> None:
    """Model volumes: the immutable per-version files exported as NVMe namespaces."""


@volume.command("build")
@click.argument("name")
@click.argument("version", type=int)
@_options
def build_cmd(name, version, config, data_dir) -> None:
    """Build (or confirm) the volume of NAME VERSION."""
    from pifarm.target.volumes import VolumeBuilder

    def go(ctx):
        e = VolumeBuilder(ctx.registry, ctx.target.volume_dir).build(name, version)
        click.echo(f"{e.path} ({Path(e.path).stat().st_size} bytes, manifest {e.manifest_digest})")
    _with_ctx(go)(config, data_dir)


@volume.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trusted-key", "keys", multiple=True, type=click.Path(dir_okay=False),
              help="signing.pub to check the manifest signature with (repeatable).")
@click.option("--no-verify", is_flag=True, help="Only print the table of contents.")
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(file, keys, no_verify, as_json) -> None:
    """Print a volume's table of contents and verify every blob."""
    _inspect(file, keys, no_verify, as_json)


def _inspect(file: str, keys, no_verify: bool, as_json: bool) -> None:
    from pifarm.signed.manifest import namespace_uuid
    from pifarm.signed.signing import TrustedKeys
    from pifarm.volume.format import VolumeReader

    with VolumeReader.from_file(file) as r:
        signed = None
        if keys:
            TrustedKeys.from_files(keys).verify(r.manifest_document, f"manifest in {file}")
            signed = True
        verified = []
        if not no_verify:
            for _path, digest, _off, _size in r.entries:
                if digest not in verified:
                    r.verify_blob(digest)  # raises IntegrityError naming the blob
                    verified.append(digest)
        info: dict[str, Any] = {
            "file": file, "name": r.manifest.name, "version": r.manifest.version,
            "manifest_digest": r.manifest_digest, "namespace_uuid": str(namespace_uuid(r.manifest_digest)),
            "size": r.superblock.volume_size, "toc": {"offset": r.superblock.toc_offset, "length": r.superblock.toc_length},
            "signature": "verified" if signed else "not checked (pass --trusted-key)",
            "blobs_verified": len(verified) if not no_verify else None,
            "entries": [{"path": p, "digest": d, "offset": o, "size": s} for p, d, o, s in r.entries],
        }
    if as_json:
        echo_json(info, indent=2)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{info['name']} v{info['version']}  {info['manifest_digest']}")
    for c in ("path", "offset", "size", "digest"):
        t.add_column(c, overflow="fold")
    for e in info["entries"]:
        t.add_row(e["path"], str(e["offset"]), str(e["size"]), e["digest"])
    con = Console(width=160)
    con.print(t)
    con.print(f"volume {info['size']} bytes, TOC {info['toc']['offset']}+{info['toc']['length']}, "
              f"namespace UUID {info['namespace_uuid']}, signature {info['signature']}")
    click.echo("all blobs verified" if not no_verify else "blobs not verified (--no-verify)")


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    auth = {True: "yes", False: "no", None: "unknown (no host yet)"}[st["dhchap_supported"]]
    con.print(f"configfs {st['configfs_root']}  subsystem {st['subsystem']} "
              f"({'present' if st['present'] else 'absent'})  DH-HMAC-CHAP: {auth}")
    t = Table(title="namespaces")
    for c in ("nsid", "enabled", "uuid", "device_path", "buffered_io"):
        t.add_column(c, overflow="fold")
    for n in st["namespaces"]:
        t.add_row(str(n["nsid"]), "yes" if n["enabled"] else "no", n["uuid"], n["device_path"], n["buffered_io"])
    con.print(t)
    for p in st["ports"]:
        con.print(f"port {p['portid']}: {p['trtype']} {p['traddr']}:{p['trsvcid']} "
                  f"{'linked' if p['linked'] else 'not linked'}")
    con.print(f"allowed hosts: {', '.join(st['allowed_hosts']) or '(none)'}; volumes: {len(st['volumes'])}")

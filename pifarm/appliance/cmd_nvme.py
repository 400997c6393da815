"""`pifarm nvme discover|ls|read`: userspace NVMe/TCP for kernels without nvme-cli support, and
`pifarm target serve-userspace`: the read-only userspace target."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import click

from pifarm.errors import UsageError

DEFAULT_PORT = 4420


def _params(address: str, hostnqn: str, subnqn: str | None, hostid: str | None, digest: tuple[bool, bool],
            timeout: float, dhchap_secret: str | None = None, **extra):
    from pifarm.initiator.nvme_tcp import ConnectParams, parse_address
    from pifarm.nvmewire import DISCOVERY_NQN

    host, port = parse_address(address, DEFAULT_PORT)
    try:
        hid = uuid.UUID(hostid) if hostid else None
    except ValueError as e:
        raise UsageError(f"--hostid {hostid!r} is not a UUID") from e
    return ConnectParams(host=host, port=port, subnqn=subnqn or DISCOVERY_NQN, hostnqn=hostnqn, hostid=hid,
                         hdgst=digest[0], ddgst=digest[1], timeout=timeout, dhchap_secret=dhchap_secret, **extra)


def _common(f):
    f = click.option("--dhchap-secret", "-S", default=None, envvar="PIFARM_NVME_DHCHAP_SECRET",
                     help="This host's DH-HMAC-CHAP secret (DHHC-1:..:..:), used if the target asks.")(f)
    f = click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds allowed per exchange.")(f)
    f = click.option("-G", "--data-digest", "ddgst", is_flag=True, help="Negotiate CRC32C data digests.")(f)
    f = click.option("-g", "--hdr-digest", "hdgst", is_flag=True, help="Negotiate CRC32C header digests.")(f)
    f = click.option("--hostid", default=None, help="Host UUID (default: from a uuid-form host NQN).")(f)
    f = click.option("--hostnqn", required=True, help="This host's NQN, as the target's allowlist knows it.")(f)
    return click.argument("address", metavar="HOST[:PORT]")(f)


@click.group("nvme")
def nvme() -> None:
    """Userspace NVMe/TCP host: no kernel nvme-fabrics needed."""


@nvme.command("discover")
@_common
def discover(address: str, hostnqn: str, hostid: str | None, hdgst: bool, ddgst: bool, timeout: float,
             dhchap_secret: str | None) -> None:
    """List the discovery log of the controller at HOST[:PORT]."""
    from pifarm.initiator.nvme_tcp import NvmeTcpClient
    from pifarm.nvmewire import SUBTYPE_CURRENT_DISCOVERY, SUBTYPE_NVME

    kinds = {SUBTYPE_NVME: "nvme subsystem", SUBTYPE_CURRENT_DISCOVERY: "current discovery subsystem"}
    with NvmeTcpClient(_params(address, hostnqn, None, hostid, (hdgst, ddgst), timeout, dhchap_secret, kato_ms=0),
                       retries=1) as c:
        log = c.discovery_log()
    click.echo(f"Discovery Log Number of Records {len(log.entries)}, Generation counter {log.genctr}")
    for i, e in enumerate(log.entries):
        click.echo(f"=====Discovery Log Entry {i}======\n"
                   f"trtype:  {'tcp' if e.trtype == 3 else e.trtype}\n"
                   f"adrfam:  {'ipv4' if e.adrfam == 1 else 'ipv6' if e.adrfam == 2 else e.adrfam}\n"
                   f"subtype: {kinds.get(e.subtype, e.subtype)}\n"
                   f"portid:  {e.portid}\n"
                   f"trsvcid: {e.trsvcid}\n"
                   f"subnqn:  {e.subnqn}\n"
                   f"traddr:  {e.traddr}")


@nvme.command("ls")
@click.option("--subnqn", required=True, help="NQN of the NVM subsystem.")
@_common
def ls(address: str, subnqn: str, hostnqn: str, hostid: str | None, hdgst: bool, ddgst: bool, timeout: float,
       dhchap_secret: str | None) -> None:
    """List the namespaces of SUBNQN at HOST[:PORT]: nsid, size, UUID, NGUID."""
    from pifarm.initiator.nvme_tcp import NvmeTcpClient

    with NvmeTcpClient(_params(address, hostnqn, subnqn, hostid, (hdgst, ddgst), timeout, dhchap_secret),
                       retries=1) as c:
        nss = c.namespaces()
    click.echo(f"{'nsid':>6}  {'size':>14}  {'uuid':36}  {'nguid':32}  mode")
    for ns in nss:
        click.echo(f"{ns.nsid:>6}  {ns.size:>14}  {str(ns.uuid or '-'):36}  {(ns.nguid or b'').hex() or '-':32}  "
                   f"{'ro' if ns.write_protected else 'rw'}")


@nvme.command("read")
@click.option("--subnqn", required=True, help="NQN of the NVM subsystem.")
@click.option("--nsid", type=click.IntRange(1, 0xFFFFFFFE), required=True, help="Namespace to read.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="First byte.")
@click.option("--length", type=click.IntRange(0), default=None, help="Bytes to read (default: to the end).")
@_common
def read(address: str, subnqn: str, nsid: int, offset: int, length: int | None, hostnqn: str, hostid: str | None,
         hdgst: bool, ddgst: bool, timeout: float, dhchap_secret: str | None) -> None:
    """Copy namespace bytes to stdout: pifarm nvme read HOST --subnqn S --hostnqn N --nsid K > FILE."""
    from pifarm.initiator.nvme_tcp import NvmeTcpClient

    with NvmeTcpClient(_params(address, hostnqn, subnqn, hostid, (hdgst, ddgst), timeout, dhchap_secret,
                               io_queues=2)) as c:
        ns = c.call(lambda ctrl: ctrl.namespace(nsid))
        end = ns.size if length is None else offset + length
        if end > ns.size or offset > ns.size:
            raise UsageError(f"--offset {offset} --length {length} runs past the end of namespace {nsid} ({ns.size} bytes)")
        out = sys.stdout.buffer
        for chunk in c.iter_read(ns, offset, end - offset):
            out.write(chunk)
        out.flush()


@click.command("serve-userspace")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True,
              help="Directory holding the volume files to export (searched recursively, rescanned every 2 s).")
@click.option("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", show_default=True, help="HOST:PORT to listen on.")
@click.option("--subnqn", default=None, help="Subsystem NQN (default: derived from the host name).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Host NQN allowed to connect (repeatable).")
@click.option("--allow-any-host", is_flag=True, help="Let any host connect (only for demos on a closed network).")
def serve_userspace(data_dir: Path, listen: str, subnqn: str | None, allow_hosts: tuple[str, ...],
                    allow_any_host: bool) -> None:
    """Export model volumes READ-ONLY over userspace NVMe/TCP (for hosts without kernel nvmet)."""
    from pifarm.initiator.nvme_tcp import parse_address
    from pifarm.target.userspace import default_nqn, directory_exports, serve

    host, port = parse_address(listen, DEFAULT_PORT)
    if not allow_hosts and not allow_any_host:
        raise UsageError("no host may connect: pass --allow-host NQN (repeatable) or --allow-any-host")
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory")
    if not data_dir.exists():
        click.echo(f"warning: {data_dir} does not exist yet; its volumes are exported once it does", err=True)
    nqn = subnqn or default_nqn()
    config = directory_exports(data_dir, nqn, frozenset(allow_hosts), allow_any_host=allow_any_host,
                               host=host, port=port)
    first = config()
    for ns in first.subsystems[0].namespaces:
        click.echo(f"nsid {ns.nsid}: {ns.path} uuid {ns.uuid}", err=True)
    click.echo(f"serving {nqn} on {host}:{port} (read-only, {len(first.subsystems[0].namespaces)} volumes; "
               f"new volumes under {data_dir} appear within seconds)", err=True)
    try:
        serve(first, rescan=config)
    except KeyboardInterrupt:
        pass


def register(cli: click.Group) -> None:
    cli.add_command(nvme)
    target = cli.commands.get("target")
    if not isinstance(target, click.Group):
        @click.group("target")
        def target() -> None:
            """NVMe/TCP target commands."""

        cli.add_command(target)
    target.add_command(serve_userspace)

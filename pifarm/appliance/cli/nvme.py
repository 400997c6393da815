"""`pifarm nvme discover|ls|read`: the userspace NVMe/TCP host, for kernels without nvme-cli support."""

from __future__ import annotations

import sys

import click

from pifarm.appliance.cli._secrets import secret_options
from pifarm.errors import UsageError

DEFAULT_PORT = 4420


def _params(address: str, hostnqn: str, subnqn: str | None, hostid: str | None, digest: tuple[bool, bool],
            timeout: float, dhchap_secret: str | None = None, **extra):
    import uuid

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
    f = secret_options("dhchap-secret", "PIFARM_NVME_DHCHAP_SECRET",
                       "This host's DH-HMAC-CHAP secret (DHHC-1:..:..:), used if the target asks.", short="-S")(f)
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

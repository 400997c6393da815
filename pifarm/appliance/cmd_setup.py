"""`pifarm setup aggregator|node`, `pifarm pki ...` and `pifarm doctor`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pifarm.errors import PifarmError, UsageError


def _root(root: str | None, dry_run: bool):
    from pifarm.appliance.setup import Root

    if root is None:
        return Root()
    p = Path(root).resolve()
    if p == Path("/"):
        return Root()
    if not dry_run:
        p.mkdir(parents=True, exist_ok=True)
    return Root(p)


@click.group("setup")
def setup_group() -> None:
    """Install and enable pifarm on this machine (idempotent; --dry-run shows every step)."""


@setup_group.command("aggregator")
@click.option("--root", "root", type=click.Path(file_okay=False), help="Install into this staging root instead of /.")
@click.option("--dry-run", is_flag=True, help="Print every file and command, change nothing.")
@click.option("--force", is_flag=True, help="Overwrite an edited config (a .bak is kept).")
@click.option("--data-dir", default="/var/lib/pifarm/aggregator", show_default=True)
@click.option("--config", "config_path", default="/etc/pifarm/aggregator.toml", show_default=True)
@click.option("--listen", default="0.0.0.0:8470", show_default=True, help="API (mTLS) address.")
@click.option("--name", "dns_names", multiple=True, help="DNS name for the server certificate (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP address for the server certificate (repeatable).")
@click.option("--s3", "s3_url", default="", help="Use S3: s3://bucket/prefix (bucket created with versioning).")
@click.option("--s3-endpoint", default="", help="S3 endpoint URL (SeaweedFS, MinIO...).")
@click.option("--no-tls", is_flag=True, help="Plain HTTP API (lab only; nodes cannot enroll).")
@click.option("--no-start", is_flag=True, help="Enable the units but do not start them now.")
def setup_aggregator(root, dry_run, force, data_dir, config_path, listen, dns_names, ips, s3_url, s3_endpoint,
                     no_tls, no_start) -> None:
    """Registry, PKI, enrollment secret, configfs/nvmet at boot, network tuning, units."""
    from pifarm.appliance import setup as s

    r = _root(root, dry_run)
    o = s.AggregatorOptions(data_dir=data_dir, config=config_path, listen=listen, dns_names=tuple(dns_names),
                            ips=tuple(ips), s3_url=s3_url, s3_endpoint=s3_endpoint, tls=not no_tls,
                            start=not no_start, force=force)
    s.run_plan(s.plan_aggregator(o, r), dry_run=dry_run, echo=click.echo)
    if not dry_run:
        hint = s.enroll_command_hint(o, r)
        if hint:
            click.echo(f"\nenroll each node with:\n  {hint}")


@setup_group.command("node")
@click.option("--aggregator", required=True, help="The aggregator API URL, e.g. https://agg:8470.")
@click.option("--enroll", "secret", required=True, help="The aggregator's enrollment secret.")
@click.option("--ca-hash", default=None, help="sha256:<hex> of the farm CA (printed by setup aggregator).")
@click.option("--enroll-url", default="", help="Enrollment listener (default: the API's port + 1).")
@click.option("--root", "root", type=click.Path(file_okay=False), help="Install into this staging root instead of /.")
@click.option("--dry-run", is_flag=True, help="Print every file and command, change nothing.")
@click.option("--force", is_flag=True, help="Overwrite an edited config; re-enroll even with a certificate.")
@click.option("--config", "config_path", default="/etc/pifarm/node.toml", show_default=True)
@click.option("--channel", type=click.Choice(["stable", "canary"]), default="stable", show_default=True)
@click.option("--cache-max", default="", help="Cache byte budget, e.g. 8GiB.")
@click.option("--hostname", default="", help="Name in the client certificate (default: this host).")
@click.option("--nvme-address", default="", help="Aggregator NVMe/TCP HOST:PORT (default: its host, port 4420).")
@click.option("--no-start", is_flag=True, help="Enable the units but do not start them now.")
def setup_node(aggregator, secret, ca_hash, enroll_url, root, dry_run, force, config_path, channel, cache_max,
               hostname, nvme_address, no_start) -> None:
    """Host identity, client certificate + host registration (enrollment), config, units."""
    from pifarm.appliance import setup as s

    if ca_hash is not None and not ca_hash.lower().startswith("sha256:"):
        raise UsageError(f"--ca-hash {ca_hash!r} must look like sha256:<64 hex>")
    o = s.NodeOptions(aggregator=aggregator, enroll_secret=secret, enroll_url=enroll_url,
                      ca_hash=ca_hash.lower() if ca_hash else None, config=config_path, cache_max=cache_max,
                      channel=channel, hostname=hostname, nvme_address=nvme_address, start=not no_start, force=force)
    s.run_plan(s.plan_node(o, _root(root, dry_run)), dry_run=dry_run, echo=click.echo)


# -- pki ---------------------------------------------------------------------------------------------

@click.group("pki")
def pki_group() -> None:
    """The farm's private CA: certificates for mTLS, rotation, renewal."""


def _data_dir_option(f):
    return click.option("--data-dir", default="/var/lib/pifarm/aggregator", show_default=True,
                        help="Aggregator data dir (holds pki/).")(f)


@pki_group.command("init")
@_data_dir_option
@click.option("--name", "dns_names", multiple=True)
@click.option("--ip", "ips", multiple=True)
def pki_init(data_dir, dns_names, ips) -> None:
    """Create the CA and the server certificate (idempotent)."""
    from pifarm.pki.farm import AggregatorPki

    made = AggregatorPki(Path(data_dir)).init(dns_names=list(dns_names) or None, ips=list(ips) or None)
    click.echo("\n".join(f"created {m}" for m in made) or "PKI exists (kept)")


@pki_group.command("status")
@_data_dir_option
@click.option("--json", "as_json", is_flag=True)
def pki_status(data_dir, as_json) -> None:
    """CA, bundle, server certificate, rotation phase."""
    from pifarm.pki.farm import AggregatorPki

    st = AggregatorPki(Path(data_dir)).status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    if not st["initialised"]:
        raise PifarmError(f"no PKI in {st['dir']}; run `pifarm pki init` or `pifarm setup aggregator`")
    click.echo(f"phase:  {st['phase']}")
    click.echo(f"CA:     {st['ca']['subject']}  {st['ca']['fingerprint']}  until {st['ca']['not_after']}")
    for c in st["bundle"]:
        click.echo(f"trusts: {c['subject']}  {c['fingerprint']}")
    if "server" in st:
        click.echo(f"server: {st['server']['subject']}  until {st['server']['not_after']}")
    click.echo(f"hosts:  {st['hosts']} enrolled")
    for h in st.get("stragglers", []):
        click.echo(f"  still on the old CA: {h}")


@pki_group.command("issue-client")
@_data_dir_option
@click.argument("name")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for node.key/node.crt/bundle.")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650))
def pki_issue_client(data_dir, name, out, days) -> None:
    """Issue a client certificate by hand (instead of enrollment)."""
    from pifarm.pki.farm import AggregatorPki

    tls = AggregatorPki(Path(data_dir)).issue_client(name, out, days=days)
    click.echo(f"wrote {tls.key}, {tls.cert}, {tls.bundle}")


@pki_group.command("rotate")
@_data_dir_option
@click.option("--finish", is_flag=True, help="Step 3: new server certificate, drop the old CA.")
@click.option("--server", "server_only", is_flag=True, help="Only re-issue the server certificate (same CA).")
@click.option("--force", is_flag=True, help="With --finish: cut off nodes still on the old CA.")
def pki_rotate(data_dir, finish, server_only, force) -> None:
    """Rotate the CA in steps, so nodes move over one at a time (see `pifarm pki --help`)."""
    from pifarm.pki.farm import AggregatorPki

    p = AggregatorPki(Path(data_dir))
    if finish and server_only:
        raise UsageError("--finish and --server are exclusive")
    if server_only:
        p.issue_server()
        click.echo(f"re-issued {p.server_cert}; restart the aggregator (systemctl restart pifarm-aggregator)")
    elif finish:
        p.finish(force=force)
        click.echo("rotation finished: server certificate from the new CA, old CA no longer trusted.\n"
                   "restart the aggregator once: systemctl restart pifarm-aggregator")
    else:
        new, old = p.rotate()
        click.echo(f"new CA {new} staged beside {old}.\n"
                   "1. restart the aggregator once so it trusts both (systemctl restart pifarm-aggregator)\n"
                   "2. on each node, when convenient: pifarm pki renew\n"
                   "3. then here: pifarm pki rotate --finish")


@pki_group.command("renew")
@click.option("--aggregator", default=None, help="Enrollment URL (default: from node.toml: API port + 1).")
@click.option("--config", "config_path", default="/etc/pifarm/node.toml", show_default=True)
@click.option("--tls-dir", default="/etc/pifarm/tls", show_default=True)
def pki_renew(aggregator, config_path, tls_dir) -> None:
    """Node: replace this node's client certificate with one from the current CA."""
    import tomllib

    from pifarm.pki.farm import renew_node
    from pifarm.appliance.setup import default_enroll_url

    url = aggregator
    if url is None:
        try:
            with open(config_path, "rb") as f:
                api = (tomllib.load(f).get("node") or {}).get("aggregator")
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"--aggregator not given and {config_path} unreadable: {e}") from e
        if not api:
            raise UsageError(f"--aggregator not given and {config_path} names no [node] aggregator")
        url = default_enroll_url(api)
    resp = renew_node(url, tls_dir)
    click.echo(f"renewed: certificate until {resp['not_after']}; restart pifarm-node to use it")


@pki_group.command("serve-enroll")
@_data_dir_option
@click.option("--listen", default="0.0.0.0:8471", show_default=True)
def pki_serve_enroll(data_dir, listen) -> None:
    """Serve only the enrollment endpoints (server TLS, no client certificate needed)."""
    from pifarm.pki.farm import AggregatorPki
    from pifarm.registry.enroll_api import enrollment_server
    from pifarm.registry.settings import parse_listen

    host, port = parse_listen(listen)
    p = AggregatorPki(Path(data_dir))
    if not p.exists():
        raise PifarmError(f"no PKI in {p.dir}; run `pifarm setup aggregator` first")
    enrollment_server(data_dir, host, port, certfile=str(p.server_cert), keyfile=str(p.server_key),
                      log_level="info").run()


# -- doctor ------------------------------------------------------------------------------------------

@click.command("doctor")
@click.option("--role", type=click.Choice(["aggregator", "node", "auto"]), default="auto", show_default=True)
@click.option("--config", "config_path", default=None, help="Role config (default /etc/pifarm/<role>.toml).")
@click.option("--json", "as_json", is_flag=True)
def doctor_command(role, config_path, as_json) -> None:
    """Check this machine for the farm: pass / warn / fail, with the fix for each."""
    from pifarm.appliance import doctor

    results = doctor.run(doctor.Env.system(role=role, config=config_path))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        doctor.render(results, echo=click.echo)
    failed = [r.check for r in results if r.status == "fail"]
    if failed:
        raise PifarmError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")


def register(cli: click.Group) -> None:
    cli.add_command(setup_group)
    cli.add_command(pki_group)
    cli.add_command(doctor_command)

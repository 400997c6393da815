"""`pifarm setup aggregator|node`: install and enable pifarm on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from pifarm.appliance.cli._secrets import resolve, secret_file_option
from pifarm.errors import UsageError


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
def setup() -> None:
    """Install and enable pifarm on this machine (idempotent; --dry-run shows every step)."""


@setup.command("aggregator")
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
    """Registry, PKI, configfs/nvmet at boot, network tuning, units (nodes enroll with tokens)."""
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


@setup.command("node")
@click.option("--aggregator", required=True, help="The aggregator API URL, e.g. https://agg:8470.")
@click.option("--enroll", "secret", default=None, envvar="PIFARM_ENROLL_TOKEN",
              help="Enrollment token (env PIFARM_ENROLL_TOKEN); deprecated on the command line: use --enroll-file.")
@secret_file_option("enroll", "The one-time token from `pifarm enroll token create` on the aggregator.")
@click.option("--ca-hash", default=None, help="sha256:<hex> of the farm CA (printed by setup aggregator).")
@click.option("--trust-on-first-use", is_flag=True,
              help="Without --ca-hash: accept whatever CA answers (anyone on the LAN could).")
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
def setup_node(aggregator, secret, enroll_file, ca_hash, trust_on_first_use, enroll_url, root, dry_run, force,
               config_path, channel, cache_max, hostname, nvme_address, no_start) -> None:
    """Host identity, client certificate + host registration (enrollment), config, units."""
    from pifarm.appliance import setup as s

    if ca_hash is not None and not ca_hash.lower().startswith("sha256:"):
        raise UsageError(f"--ca-hash {ca_hash!r} must look like sha256:<64 hex>")
    if ca_hash is None and not trust_on_first_use:
        raise UsageError("--ca-hash sha256:<hex> is required (printed by `pifarm setup aggregator` and `pifarm pki "
                         "status`); --trust-on-first-use accepts whatever CA answers")
    secret = resolve(secret, enroll_file, param="secret", flag="--enroll", file_flag="--enroll-file",
                     env="PIFARM_ENROLL_TOKEN")
    if not secret:
        raise UsageError("an enrollment token is required: --enroll-file FILE (- for stdin) or $PIFARM_ENROLL_TOKEN "
                         "(create one on the aggregator: pifarm enroll token create --ttl 1h)")
    o = s.NodeOptions(aggregator=aggregator, enroll_secret=secret, enroll_url=enroll_url, trust_on_first_use=trust_on_first_use,
                      ca_hash=ca_hash.lower() if ca_hash else None, config=config_path, cache_max=cache_max,
                      channel=channel, hostname=hostname, nvme_address=nvme_address, start=not no_start, force=force)
    s.run_plan(s.plan_node(o, _root(root, dry_run)), dry_run=dry_run, echo=click.echo)

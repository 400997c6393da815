"""`pifarm pki ...`: the farm's private CA (aggregator) and a node's certificate renewal."""

from __future__ import annotations

from pathlib import Path

import click

from pifarm.appliance.cli._options import aggregator_data_dir_option
from pifarm.appliance.cli._output import echo_json
from pifarm.errors import PifarmError, UsageError


@click.group("pki")
def pki() -> None:
    """The farm's private CA: certificates for mTLS, rotation, renewal."""


_data_dir_option = aggregator_data_dir_option("Aggregator data dir (holds pki/).")


@pki.command("init")
@_data_dir_option
@click.option("--name", "dns_names", multiple=True)
@click.option("--ip", "ips", multiple=True)
def pki_init(data_dir, dns_names, ips) -> None:
    """Create the CA and the server certificate (idempotent)."""
    from pifarm.pki.farm import AggregatorPki

    made = AggregatorPki(Path(data_dir)).init(dns_names=list(dns_names) or None, ips=list(ips) or None)
    click.echo("\n".join(f"created {m}" for m in made) or "PKI exists (kept)")


@pki.command("status")
@_data_dir_option
@click.option("--json", "as_json", is_flag=True)
def pki_status(data_dir, as_json) -> None:
    """CA, bundle, server certificate, rotation phase."""
    from pifarm.pki.farm import AggregatorPki

    st = AggregatorPki(Path(data_dir)).status()
    if as_json:
        echo_json(st, indent=2)
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


@pki.command("issue-client")
@_data_dir_option
@click.argument("name")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for node.key/node.crt/bundle.")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650))
def pki_issue_client(data_dir, name, out, days) -> None:
    """Issue a client certificate by hand (instead of enrollment)."""
    from pifarm.pki.farm import AggregatorPki

    tls = AggregatorPki(Path(data_dir)).issue_client(name, out, days=days)
    click.echo(f"wrote {tls.key}, {tls.cert}, {tls.bundle}")


@pki.command("rotate")
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


@pki.command("renew")
@click.option("--aggregator", default=None, help="Enrollment URL (default: from node.toml: API port + 1).")
@click.option("--config", "config_path", default="/etc/pifarm/node.toml", show_default=True)
@click.option("--tls-dir", default="/etc/pifarm/tls", show_default=True)
def pki_renew(aggregator, config_path, tls_dir) -> None:
    """Node: replace this node's client certificate with one from the current CA."""
    from pifarm.appliance.config import load_node_config
    from pifarm.appliance.setup import default_enroll_url
    from pifarm.errors import ConfigError
    from pifarm.pki.farm import renew_node

    url = aggregator
    if url is None:
        try:
            api = load_node_config(config_path, only=("node",)).node.aggregator
        except ConfigError as e:
            raise UsageError(f"--aggregator not given and {config_path} unusable: {e}") from e
        if not api:
            raise UsageError(f"--aggregator not given and {config_path} names no [node] aggregator")
        url = default_enroll_url(api)
    resp = renew_node(url, tls_dir)
    click.echo(f"renewed: certificate until {resp['not_after']}; restart pifarm-node to use it")


@pki.command("serve-enroll")
@_data_dir_option
@click.option("--listen", default="0.0.0.0:8471", show_default=True)
def pki_serve_enroll(data_dir, listen) -> None:
    """Serve only the enrollment endpoints (server TLS, no client certificate needed)."""
    from pifarm.pki.farm import AggregatorPki
    from pifarm.registry.enroll_api import enrollment_server
    from pifarm.listen import parse_listen

    host, port = parse_listen(listen)
    p = AggregatorPki(Path(data_dir))
    if not p.exists():
        raise PifarmError(f"no PKI in {p.dir}; run `pifarm setup aggregator` first")
    enrollment_server(data_dir, host, port, certfile=str(p.server_cert), keyfile=str(p.server_key),
                      log_level="info").run()

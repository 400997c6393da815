"""`pifarm enroll ...`: one-time enrollment tokens and certificate revocation (aggregator side)."""

from __future__ import annotations

from pathlib import Path

import click

from pifarm.appliance.cli._options import aggregator_data_dir_option
from pifarm.appliance.cli._output import echo_json


@click.group("enroll")
def enroll() -> None:
    """Enrollment tokens for new nodes; revoking a node's certificate."""


@enroll.group("token")
def token() -> None:
    """One-time, expiring enrollment tokens (only their hash is kept)."""


_data_dir_option = aggregator_data_dir_option("Aggregator data dir.")


@token.command("create")
@_data_dir_option
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 15m, 1h, 2d (at most 7d).")
@click.option("--host", "hostnqn", default="", help="Only this host NQN may use it.")
@click.option("--takeover", is_flag=True,
              help="May re-enroll an NQN another certificate holds (that certificate is then revoked).")
@click.option("--note", default="", help="A note kept with the token (who it is for).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the token to this file (0600) instead of stdout.")
def token_create(data_dir, ttl, hostnqn, takeover, note, out) -> None:
    """Create a token: printed once (to stdout, or --out), give it to one node's
    `pifarm setup node --enroll-file FILE` (or stdin: `--enroll-file -`)."""
    from pifarm.durable import atomic_write
    from pifarm.pki.certs import check_hostnqn
    from pifarm.pki.tokens import TokenStore, parse_ttl

    if hostnqn:
        check_hostnqn(hostnqn)
    secret, tok = TokenStore(Path(data_dir)).create(parse_ttl(ttl), hostnqn=hostnqn, takeover=takeover, note=note)
    if out is not None:
        atomic_write(out, (secret + "\n").encode(), 0o600)
        click.echo(f"token {tok.id} written to {out}, valid until {tok.expires}", err=True)
    else:
        click.echo(secret)
        click.echo(f"token {tok.id}, valid until {tok.expires}, one use", err=True)


@token.command("list")
@_data_dir_option
@click.option("--json", "as_json", is_flag=True)
def token_list(data_dir, as_json) -> None:
    """Tokens and their state (valid, used, expired); never the secrets."""
    from pifarm.pki.tokens import TokenStore

    tokens = TokenStore(Path(data_dir)).list()
    if as_json:
        echo_json([{**{k: v for k, v in t.__dict__.items() if k != "sha256"}, "state": t.state()} for t in tokens],
                  indent=2)
        return
    for t in tokens:
        used = f" by {t.used_by} at {t.used_at}" if t.used_at else ""
        click.echo(f"{t.id}  {t.state():<7}  until {t.expires}{used}  {t.hostnqn or 'any host'}"
                   f"{'  takeover' if t.takeover else ''}  {t.note}")


@token.command("revoke")
@_data_dir_option
@click.argument("token_id")
def token_revoke(data_dir, token_id) -> None:
    """Withdraw an unused token."""
    from pifarm.errors import NotFound
    from pifarm.pki.tokens import TokenStore

    if not TokenStore(Path(data_dir)).revoke(token_id):
        raise NotFound(f"no token {token_id}; see `pifarm enroll token list`")
    click.echo(f"token {token_id} withdrawn")


@enroll.command("revoke")
@_data_dir_option
@click.argument("hostnqn")
def revoke(data_dir, hostnqn) -> None:
    """Revoke a node: its certificate goes on the CRL (the mTLS API refuses it from the next
    connection), it can no longer renew, and it leaves the target's allowed hosts."""
    from pifarm.errors import NotFound
    from pifarm.pki.revocation import revoke as revoke_cert
    from pifarm.target.hosts import HostStore

    d = Path(data_dir)
    rec = revoke_cert(d, hostnqn)
    try:
        HostStore(d / "target" / "hosts.json").deny(hostnqn)
        target = "; removed from the target's allowed hosts (applied at the next target sync)"
    except NotFound:
        target = ""
    click.echo(f"revoked {hostnqn} ({rec.hostname}, certificate {rec.cert_serial}){target}")

"""`pifarm node identity` (and the NVMe attach commands of the node).

Registered after cmd_node: it adds its commands to the `node` group that module created, or
creates the group when the node commands are absent from this build.
"""

from __future__ import annotations

import json

import click


def _node_group(cli: click.Group) -> click.Group:
    group = cli.commands.get("node")
    if isinstance(group, click.Group):
        return group

    @cli.group("node")
    def node() -> None:
        """The node: cache, pulls, watcher and NVMe attach."""

    return node


def register(cli: click.Group) -> None:
    node = _node_group(cli)

    @node.command("identity")
    @click.option("--root", "root", default="/etc/nvme", show_default=True, type=click.Path(file_okay=False),
                  help="Directory of the hostnqn and hostid files nvme-cli reads.")
    @click.option("--no-create", is_flag=True, help="Only print; fail if the identity does not exist yet.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def identity(root: str, no_create: bool, as_json: bool) -> None:
        """Print this node's NVMe host NQN and host ID, writing them once if absent.

        Give the host NQN to the aggregator (`pifarm target allow-host NQN`). The files are
        never rewritten, so the NQN survives reboots and reinstalls of pifarm.
        """
        from pifarm.errors import NotFound
        from pifarm.initiator.identity import ensure_identity, read_identity

        if no_create:
            ident = read_identity(root)
            if ident is None:
                raise NotFound(f"no NVMe host identity in {root}; run `pifarm node identity --root {root}` to create it")
        else:
            ident = ensure_identity(root)
        if as_json:
            click.echo(json.dumps(ident.to_json(), sort_keys=True))
            return
        click.echo(f"hostnqn: {ident.hostnqn}")
        click.echo(f"hostid:  {ident.hostid}")
        if ident.created:
            click.echo(f"(created {', '.join(ident.created)} in {ident.root})", err=True)

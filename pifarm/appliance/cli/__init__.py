"""The `pifarm` command: one module per command group, each holding module-level click commands.

`COMMANDS` below is the whole command tree, listed once: nothing is discovered or registered by
import side effects, so what exists never depends on import order. The group modules import only
click at module level; each command imports what it uses when it runs, so `pifarm --help` and
`pifarm status` start without loading cryptography, FastAPI or the daemons.

Every PifarmError becomes one line on stderr and its exit code (1, or 2 for usage and config).
"""

from __future__ import annotations

import sys

import click

from pifarm import __version__
from pifarm.appliance.cli import cache, demo, doctor, enroll, fleet, haproxy, node, nvme, pki, registry, serve, setup, target
from pifarm.errors import PifarmError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pifarm")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Log level (daemons default to [node]/[registry] log_level = info, commands to warning).")
def cli(verbose: int, log_level: str | None) -> None:
    """pifarm: signed model registry, NVMe/TCP volumes and a verified model cache for Pi farms."""
    from pifarm.appliance import loglevel

    loglevel.configure(log_level, verbose)


#: every top-level command and group, by module
COMMANDS: tuple[click.Command, ...] = (
    # the aggregator: daemon, registry operations, keys
    registry.aggregator, registry.publish, registry.models, registry.show, registry.promote, registry.rollback,
    registry.retire, registry.keys,
    # the fleet: node reports, rollouts
    fleet.fleet, fleet.rollout,
    # HAProxy in front of the farm, driven by fleet state
    haproxy.haproxy,
    # the kernel NVMe/TCP target and model volumes; the userspace NVMe/TCP host
    target.target, target.volume, nvme.nvme,
    # the node: daemon, pulls, status, cache; the inference server alone
    node.node, node.pull, node.status, cache.cache, serve.serve, serve.sample_model,
    # installing and checking a machine
    setup.setup, pki.pki, enroll.enroll, doctor.doctor,
    demo.demo,
)
for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="pifarm", standalone_mode=False)
    except PifarmError as e:
        click.echo(f"pifarm: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("pifarm: aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return 2 if isinstance(e, click.UsageError) else 1
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

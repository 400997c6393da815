"""The `pifarm` command. Each component's commands live in their own `cmd_*.py` module and are
attached here; every PifarmError becomes one line on stderr and its exit code (1, or 2 for usage).
"""

from __future__ import annotations

import logging
import sys

import click

from pifarm import __version__
from pifarm.errors import PifarmError

COMMAND_MODULES = ("cmd_registry", "cmd_node", "cmd_serve", "cmd_target", "cmd_nvme", "cmd_setup", "cmd_demo", "cmd_attach")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pifarm")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """pifarm: signed model registry, NVMe/TCP volumes and a verified model cache for Pi farms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _attach() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"pifarm.appliance.{name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    _attach()
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

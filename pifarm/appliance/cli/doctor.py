"""`pifarm doctor`: check this machine for its role, with the fix for each failure."""

from __future__ import annotations

import click

from pifarm.appliance.cli._output import echo_json
from pifarm.errors import PifarmError


@click.command("doctor")
@click.option("--role", type=click.Choice(["aggregator", "node", "auto"]), default="auto", show_default=True)
@click.option("--config", "config_path", default=None, help="Role config (default /etc/pifarm/<role>.toml).")
@click.option("--json", "as_json", is_flag=True)
def doctor(role, config_path, as_json) -> None:
    """Check this machine for the farm: pass / warn / fail, with the fix for each."""
    from pifarm.appliance import doctor as checks

    env = checks.Env.system(role=role, config=config_path)
    results = checks.run(env)
    if as_json:  # the role checked and a summary beside the checks, so a script needs no counting
        counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail")}
        echo_json({"role": env.role, "config": env.config_path or None, "ok": not counts["fail"],
                   "summary": counts, "checks": [r.to_json() for r in results]}, indent=2)
    else:
        checks.render(results, echo=click.echo)
    failed = [r.check for r in results if r.status == "fail"]
    if failed:
        raise PifarmError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")

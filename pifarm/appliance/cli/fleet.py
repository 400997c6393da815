"""`pifarm fleet ls|show|forget|token` and `pifarm rollout start|status|pause|resume|abort`.

Both talk to a running aggregator (`--registry URL`, env PIFARM_REGISTRY); writes need its API
token (`--token`, env PIFARM_API_TOKEN). `fleet token --data-dir D` works on the aggregator host
without the API (it reads the token key in the data dir).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

import click

from pifarm.appliance.cli._secrets import secret_options
from pifarm.errors import UsageError

REGISTRY_ENV = "PIFARM_REGISTRY"
TOKEN_ENV = "PIFARM_API_TOKEN"


def _options(f):
    f = secret_options("token", TOKEN_ENV, "Bearer token for writes.")(f)
    f = click.option("--registry", "url", envvar=REGISTRY_ENV, default=None,
                     help=f"Aggregator URL, e.g. http://agg:8470 (env {REGISTRY_ENV}).")(f)
    return f


@contextmanager
def _client(url: str | None, token: str | None) -> Iterator[Any]:
    if not url:
        raise UsageError(f"no aggregator given: use --registry URL (or {REGISTRY_ENV})")
    from pifarm.client.http import AggregatorClient

    with AggregatorClient(url, token) as c:
        yield c


def _call(url, token, method: str, path: str, what: str, write: bool = False, **kw) -> Any:
    with _client(url, token) as c:
        if write and not token:
            raise UsageError(f"{what} needs the aggregator's API token: --token T (or {TOKEN_ENV})")
        return c._request(method, path, what, write=write, **kw).json()


def _ago(seconds: float) -> str:
    s = int(seconds)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _versions(rep: dict) -> tuple[str, str, str]:
    vs, srcs, errs = [], set(), []
    for name, m in sorted(rep.get("models", {}).items()):
        v = m.get("serving") if m.get("serving") is not None else m.get("active")
        vs.append(f"{name}:v{v}" + ("" if m.get("ready") else "(not ready)"))
        if m.get("source"):
            srcs.add(m["source"])
        if m.get("error"):
            errs.append(f"{name}: {m['error']}")
    return " ".join(vs) or "-", ",".join(sorted(srcs)) or "-", "; ".join(errs)


# -- fleet --------------------------------------------------------------------------------------
@click.group("fleet")
def fleet() -> None:
    """What every node reports: state, versions, sources, throttling, last seen."""


@fleet.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_options
def fleet_ls(as_json, url, token) -> None:
    """Every node the aggregator has heard from."""
    nodes = _call(url, token, "GET", "/v1/fleet", "fleet")["nodes"]
    if as_json:
        click.echo(json.dumps(nodes, indent=2, sort_keys=True))
        return
    rows = [("NODE", "HOST", "STATE", "VERSIONS", "SOURCE", "REASON", "THROTTLING", "LAST SEEN")]
    for n in nodes:
        rep = n["report"]
        versions, source, errs = _versions(rep)
        thr = rep.get("throttling", {})
        reason = rep.get("reason") or errs or "-"
        rows.append((n["node"][:8], rep.get("hostname") or "-", n["state"], versions, source, reason[:60],
                     thr.get("status", "unknown") + (f" {','.join(thr.get('flags') or [])}" if thr.get("flags") else ""),
                     _ago(n["seconds_since"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


@fleet.command("show")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the default is JSON too, indented).")
@_options
def fleet_show(node, as_json, url, token) -> None:
    """One node's last report (NODE: id, unique hostname or unique id prefix)."""
    out = _call(url, token, "GET", f"/v1/fleet/{node}", f"fleet node {node}")
    click.echo(json.dumps(out, indent=None if as_json else 2, sort_keys=True))


@fleet.command("forget")
@click.argument("node")
@_options
def fleet_forget(node, url, token) -> None:
    """Drop a node from the fleet state (it reappears if it reports again)."""
    out = _call(url, token, "DELETE", f"/v1/fleet/{node}", f"forget {node}", write=True)
    click.echo(f"forgot node {out['forgotten']}")


@fleet.command("token")
@click.argument("node")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Read the token key from this aggregator data dir instead of asking the API.")
@_options
def fleet_token(node, data_dir, url, token) -> None:
    """Print the report token of node id NODE (for its [node] report_token)."""
    if data_dir:
        from pifarm.fleetwire.report import NODE_ID_RE
        from pifarm.registry.fleet_api import load_token_key, node_token

        if not NODE_ID_RE.match(node):
            raise UsageError(f"{node!r} is not a node id")
        click.echo(node_token(load_token_key(data_dir), node))
        return
    click.echo(_call(url, token, "POST", f"/v1/fleet/tokens/{node}", f"token of {node}", write=True)["token"])


# -- rollout ------------------------------------------------------------------------------------
@click.group("rollout")
def rollout() -> None:
    """Take a version to stable in waves, gated by the fleet's own numbers."""


def _describe(r: dict) -> list[str]:
    waves = ",".join(f"{w[1]:g}%" if w[0] == "percent" else str(w[1]) for w in r["waves"])
    lines = [f"{r['model']} v{r['version']} ({r['id']}): {r['state']}"
             + (f", wave {r['wave'] + 1}/{len(r['waves'])} {r['phase']}" if r["state"] in ("running", "paused") else ""),
             f"  waves {waves}; previous stable v{r['previous']}; {len(r['members'])} node(s) in the current wave"]
    g = r["gates"]
    lines.append(f"  gates: bake {g['bake']:g} s, error rate <= stable + {g['max_error_rate']:.2%}, "
                 f"p99 ratio <= {g['max_latency_ratio']:g}, min {g['min_requests']} requests per node")
    for res in r["results"]:
        lines.append(f"  wave {res['wave']}: {'pass' if res['passed'] else 'FAIL'}: {res['reason']}")
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}")
    for at, text in r["events"][-8:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(at))} {text}")
    return lines


@rollout.command("start")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--waves", default="1,25%,100%", show_default=True, help="Node counts or percentages, cumulative.")
@click.option("--bake", type=float, default=300.0, show_default=True, help="Seconds each wave runs before its gate.")
@click.option("--max-error-rate", type=float, default=0.01, show_default=True,
              help="Allowed error rate above the stable cohort's (0.01 = 1 percentage point).")
@click.option("--max-latency-ratio", type=float, default=1.5, show_default=True, help="Allowed wave p99 / stable p99.")
@click.option("--min-requests", type=int, default=100, show_default=True,
              help="Requests per wave node before the gate judges (else it bakes longer, at most 3 bakes).")
@click.option("--max-missing", type=int, default=None,
              help="Wave nodes that may be missing at a gate (default 0 in the first wave, any later).")
@click.option("--activate-timeout", type=float, default=600.0, show_default=True,
              help="Seconds the wave's nodes have to serve the version.")
@_options
def rollout_start(name, version, waves, bake, max_error_rate, max_latency_ratio, min_requests, max_missing,
                  activate_timeout, url, token) -> None:
    """Start rolling VERSION of model NAME out to the stable nodes."""
    from pifarm.registry.rollout import parse_waves

    parse_waves(waves)  # a bad wave list is a usage error before anything is sent
    body = {"version": version, "waves": waves, "bake": bake, "max_error_rate": max_error_rate,
            "max_latency_ratio": max_latency_ratio, "min_requests": min_requests, "max_missing": max_missing,
            "activate_timeout": activate_timeout}
    r = _call(url, token, "POST", f"/v1/rollouts/{name}", f"rollout of {name} v{version}", write=True, json=body)
    click.echo("\n".join(_describe(r)))


@rollout.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_options
def rollout_status(name, as_json, url, token) -> None:
    """The running rollout of NAME, else its last one (with the outcome and its numbers)."""
    r = _call(url, token, "GET", f"/v1/rollouts/{name}", f"rollout of {name}")
    click.echo(json.dumps(r, indent=2, sort_keys=True) if as_json else "\n".join(_describe(r)))


def _verb(verb: str, doc: str):
    @rollout.command(verb, help=doc)
    @click.argument("name")
    @_options
    def cmd(name, url, token) -> None:
        r = _call(url, token, "POST", f"/v1/rollouts/{name}/{verb}", f"{verb} rollout of {name}", write=True)
        click.echo("\n".join(_describe(r)))

    return cmd


rollout_pause = _verb("pause", "Hold the rollout of NAME where it is (the bake clock stops).")
rollout_resume = _verb("resume", "Continue a paused rollout of NAME.")
rollout_abort = _verb("abort", "Stop the rollout of NAME: its wave goes back to the previous version.")

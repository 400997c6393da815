"""`pifarm haproxy render|sync`: HAProxy in front of the farm, driven by fleet state.

    render  a complete haproxy.cfg from the aggregator's fleet state
    sync    keep a running HAProxy in step through its Runtime API (servers, weights, drain)

Settings come from the aggregator config's [haproxy] section (`--config`), flags win.
"""

from __future__ import annotations

import click

REGISTRY_ENV = "PIFARM_REGISTRY"


def _settings(config, **flags):
    import dataclasses

    from pifarm.appliance.haproxy.settings import HaproxySettings

    base = HaproxySettings()
    if config:
        from pifarm.appliance.config import load_aggregator_config

        base = load_aggregator_config(config).haproxy
    return dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})


def _registry(url):
    from pifarm.errors import UsageError

    if not url:
        raise UsageError(f"no aggregator given: use --registry URL (or {REGISTRY_ENV})")
    return url


@click.group("haproxy")
def haproxy() -> None:
    """HAProxy in front of the farm: a config from fleet state, kept in step live."""


@haproxy.command("render")
@click.option("--registry", "url", envvar=REGISTRY_ENV, default=None, help=f"Aggregator URL (env {REGISTRY_ENV}).")
@click.option("--bind", default=None, help="The frontend's address (default *:8000).")
@click.option("--socket", "socket_path", default=None,
              help="The Runtime API socket to enable (default [haproxy] socket, else /run/haproxy/pifarm.sock).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, help="Write here (default stdout).")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="aggregator.toml with [haproxy].")
def render_cmd(url, bind, socket_path, out, config) -> None:
    """A complete haproxy.cfg from fleet state: a backend per model, a server per node."""
    from pifarm.appliance.haproxy.plan import plan
    from pifarm.appliance.haproxy.render import render
    from pifarm.appliance.haproxy.settings import parse_bind
    from pifarm.appliance.haproxy.source import ApiSource

    s = _settings(config, bind=bind)
    parse_bind(s.bind)
    src = ApiSource(_registry(url))
    try:
        nodes, rollouts = src()
    finally:
        src.close()
    p = plan(nodes, rollouts, s)
    text = render(p, s, socket=socket_path or s.socket or "/run/haproxy/pifarm.sock", source=url)
    if out:
        from pifarm.durable import atomic_write

        atomic_write(out, text.encode())
        n = sum(len(b.servers) for b in p.backends.values())
        click.echo(f"wrote {out}: {len(p.backends)} backend(s), {n} server(s)"
                   + (f", {len(p.skipped)} node(s) left out" if p.skipped else ""), err=True)
    else:
        click.echo(text, nl=False)
    for x in p.skipped:
        click.echo(f"pifarm: warning: node left out: {x}", err=True)


@haproxy.command("sync")
@click.option("--socket", "socket_path", default=None, help="HAProxy's Runtime API socket (PATH or ipv4@HOST:PORT).")
@click.option("--registry", "url", envvar=REGISTRY_ENV, default=None, help=f"Aggregator URL (env {REGISTRY_ENV}).")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="aggregator.toml with [haproxy].")
@click.option("--haproxy-config", "cfg_out", default=None,
              help="Keep this haproxy.cfg current (so a reload or restart starts from fleet state).")
@click.option("--reload-command", default=None, help="Run on a new model backend, e.g. 'systemctl reload haproxy'.")
@click.option("--interval", type=float, default=None, help="Seconds between looks at fleet state (0.5).")
@click.option("--listen", default="127.0.0.1:8471", show_default=True,
              help="/health and /metrics of the sync ('off' for none).")
@click.option("--once", is_flag=True, help="Sync once and exit (exit 1 if HAProxy did not answer).")
def sync_cmd(socket_path, url, config, cfg_out, reload_command, interval, listen, once) -> None:
    """Keep a running HAProxy in step with fleet state through its Runtime API."""
    import json
    import signal
    import threading

    from pifarm.appliance.haproxy.source import ApiSource
    from pifarm.appliance.haproxy.sync import Sync
    from pifarm.errors import PifarmError, UsageError

    s = _settings(config, interval=interval, socket=socket_path)
    if not s.socket:
        raise UsageError("no HAProxy runtime socket: --socket PATH (or [haproxy] socket)")
    url = _registry(url)
    sync = Sync(s, ApiSource(url), config_path=cfg_out, reload_command=reload_command, source_name=url)
    if once:
        sync.tick()
        click.echo(json.dumps(sync.status(), indent=2, default=str))
        if not sync.state["connected"] or sync.state["fleet_error"]:
            raise PifarmError(sync.state["socket_error"] or sync.state["fleet_error"] or "sync failed")
        return
    server = None
    if listen != "off":
        from pifarm.appliance.haproxy.status_http import serve_status

        server = serve_status(listen, sync)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"pifarm haproxy sync: {url} -> {s.socket} every {s.interval:g} s"
               + (f"; status on http://{listen}/health" if server else ""), err=True)
    sync.start()
    stop.wait()
    sync.stop()
    if server is not None:
        server.shutdown()

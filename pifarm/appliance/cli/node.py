"""The node's commands: `node run`, `node identity`, `pull`, `status`."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from pifarm.appliance.cli._node import cache_option, config_option, human, node_config, open_cache, trust_option
from pifarm.appliance.cli._output import echo_json
from pifarm.errors import NotFound, SourceError, UsageError

SPEC_RE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<channel>stable|canary)|@(?P<version>[0-9]+))?$")


def parse_pull_spec(spec: str) -> tuple[str, str | None, int | None]:
    """NAME, NAME:CHANNEL or NAME@VERSION."""
    from pifarm.signed.manifest import check_name

    m = SPEC_RE.match(spec)
    if not m:
        raise UsageError(f"cannot parse {spec!r}: use NAME, NAME:stable, NAME:canary or NAME@VERSION")
    check_name(m.group("name"))
    return m.group("name"), m.group("channel"), int(m.group("version")) if m.group("version") else None


@click.group("node")
def node() -> None:
    """The Pi node: its daemon and its NVMe host identity."""


@node.command("run")
@click.option("--aggregator", default=None, help="http(s)://aggregator:port ([node] aggregator).")
@config_option
@cache_option
@click.option("--state-dir", default=None, help="Where node.json lives ([node] state_dir).")
@click.option("--channel", type=click.Choice(["stable", "canary"]), default=None)
@click.option("--listen", default=None, help="HOST:PORT of the inference server ([node] listen).")
@trust_option
@click.option("--no-serve", is_flag=True, help="Only keep the cache current; start no inference server.")
def node_run(aggregator, config, cache_dir, state_dir, channel, listen, trust, no_serve):
    """Follow the registry, keep the cache verified and current, and serve inference."""
    from pifarm.appliance.node import run_node

    cfg = node_config(config, registry=aggregator, cache=cache_dir, state_dir=state_dir, trust=trust,
                      channel=channel, listen=listen)
    if not cfg.node.aggregator_urls and not cfg.s3.url:
        raise UsageError("pass --aggregator URL (or set [node] aggregator / aggregators / [s3] url in the config)")
    run_node(cfg, serve=not no_serve)


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
        echo_json(ident.to_json(), sort_keys=True)
        return
    click.echo(f"hostnqn: {ident.hostnqn}")
    click.echo(f"hostid:  {ident.hostid}")
    if ident.created:
        click.echo(f"(created {', '.join(ident.created)} in {ident.root})", err=True)


@click.command("pull")
@click.argument("spec")
@click.option("--registry", default=None, help="http(s)://aggregator:port or s3://bucket/prefix.")
@cache_option
@config_option
@trust_option
@click.option("--endpoint-url", default=None, help="S3 endpoint (e.g. SeaweedFS) for s3:// registries.")
@click.option("--retry-for", type=float, default=0.0, show_default=True,
              help="Keep retrying (and resuming) for this many seconds when every source fails.")
@click.option("-q", "--quiet", is_flag=True)
def pull(spec, registry, cache_dir, config, trust, endpoint_url, retry_for, quiet):
    """Pull NAME[:CHANNEL|@VERSION], verify every byte, and make it active in the cache."""
    cfg = node_config(config, registry=registry, cache=cache_dir, trust=trust, endpoint_url=endpoint_url)
    pull_into_cache(cfg, spec, retry_for=retry_for, quiet=quiet)


def pull_into_cache(cfg, spec: str, *, retry_for: float = 0.0, quiet: bool = False, echo=click.echo):
    """`pifarm pull`: returns the `Installed` record."""
    import random

    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from pifarm.appliance.node import trusted_keys
    from pifarm.cache.nodestate import read_state
    from pifarm.initiator.chain import build_sources, close_all, default_specs
    from pifarm.client.http import AggregatorClient
    from pifarm.initiator.s3_source import S3Documents
    from pifarm.initiator.settings import SourceContext
    from pifarm.initiator.versions import Documents, install_version, pick

    name, channel, version = parse_pull_spec(spec)
    if not cfg.node.aggregator and not cfg.s3.url:
        raise UsageError("no registry: pass --registry http(s)://aggregator:port or --registry s3://bucket/prefix")
    trusted = trusted_keys(cfg.node.trusted_keys)
    cache = open_cache(cfg)
    tls = cfg.node.tls_context()
    agg = (AggregatorClient(cfg.node.aggregator, connect_timeout=cfg.watcher.connect_timeout, tls=tls)
           if cfg.node.aggregator else None)
    docs = Documents(agg, S3Documents(cfg.s3) if cfg.s3.url else None)
    ctx = SourceContext(trusted=trusted, aggregator_url=cfg.node.aggregator, state_dir=Path(cfg.node.state_dir),
                        cache_root=Path(cfg.cache.root), s3=cfg.s3, metrics=cache.metrics, tls=tls)
    sources = build_sources(list(cfg.sources) or default_specs(cfg.node.aggregator, cfg.s3.url), ctx, strict=False)
    if not sources:
        raise SourceError("no usable source in [[sources]]; see the warnings above")
    t0 = time.monotonic()
    give_up = t0 + retry_for
    try:
        # a node's own highest revision guards a manual pull against a replayed old snapshot too
        prior = read_state(cfg.node.state_dir)
        snap, via = docs.snapshot(trusted, highest_seen=prior.revision if prior else -1)
        ptr = pick(snap, name, channel, version)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), TextColumn("[bold]{task.fields[source]}"),
                            console=Console(stderr=True), disable=quiet, transient=False)
        attempt = 0
        with progress:
            task = progress.add_task(f"{name} v{ptr.version}", total=None, source="")

            def on_bytes(n: int, source: str) -> None:
                progress.update(task, advance=n, source=source)

            while True:
                try:
                    done = install_version(cache, docs, trusted, name, ptr, sources, progress=on_bytes,
                                           on_manifest=lambda m: progress.update(task, total=m.total_size))
                    break
                except SourceError as e:
                    attempt += 1
                    wait = min(10.0, random.uniform(0, 0.5 * 2 ** min(attempt, 6)))
                    if time.monotonic() + wait > give_up:
                        raise
                    progress.console.print(f"pull: {e}; retrying in {wait:.1f}s (resumes where it stopped)")
                    time.sleep(wait)
                    progress.reset(task, total=None, source="")
    finally:
        close_all(sources)
        docs.close()
    secs = time.monotonic() - t0
    if not quiet:
        echo(f"pulled {name} v{done.manifest.version} ({done.value.manifest_digest}) via {done.source}: "
             f"{human(done.fetched)} fetched in {secs:.1f}s, {len(done.manifest.files)} file(s), now active"
             + (f"; previous v{done.previous.version}" if done.previous else ""))
    return done


def _health(url: str | None) -> tuple[dict | None, str | None]:
    """The node's /health body (any status) or (None, why). http.client: `status` loads no HTTP library."""
    import http.client
    import json
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=3)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read()), None
    except (OSError, ValueError, http.client.HTTPException) as e:
        return None, f"inference server {url} not answering ({e.__class__.__name__})"
    finally:
        conn.close()


@click.command("status")
@click.option("--state-dir", default=None, help="Where node.json lives ([node] state_dir).")
@config_option
@click.option("--json", "as_json", is_flag=True)
def status(state_dir, config, as_json):
    """What this node serves, from where, and whether it is ready, degraded or not ready.

    The state is the one the node's /health and its fleet report show: node.json (the watcher's
    view) joined with the inference server's /health."""
    from pifarm.cache.nodestate import STATE_NAME, condition, node_status, read_state

    cfg = node_config(config, state_dir=state_dir)
    st = read_state(cfg.node.state_dir)
    if st is None:
        raise NotFound(f"no node state at {Path(cfg.node.state_dir) / STATE_NAME}; is `pifarm node run` running "
                       f"with this --state-dir?")
    url = st.inference_url
    if not url:  # a node.json from before the field: the server listens at [node] listen
        from pifarm.listen import parse_listen

        host, port = parse_listen(cfg.node.listen)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    health, down = _health(url)
    state, reason = node_status(st, health, down)
    verdict, why = condition(st)
    if as_json:
        echo_json({**st.to_json(), "state": state, "reason": reason, "watcher": verdict, "watcher_reason": why,
                   "health": health}, indent=1, sort_keys=True)
        return
    click.echo(f"node: {state}" + (f": {reason}" if reason else "") +
               f"; channel {st.channel}; snapshot revision {st.revision}; updated {st.updated}")
    if st.degraded:
        click.echo(f"DEGRADED since {st.degraded_since}: {st.degraded_reason}")
    click.echo("paths: " + ", ".join(f"{k}={v}" for k, v in sorted(st.paths.items())) +
               (f" (live: {st.live_path})" if st.live_path else " (none live)"))
    if st.last_error and verdict != "untrusted snapshot":
        click.echo(f"last error: {st.last_error}")
    served = (health or {}).get("models", {})
    for name in sorted(set(st.models) | set(served)):
        m, h = st.models.get(name, {}), served.get(name, {})
        version = m.get("version") or h.get("version")
        line = f"v{version} from {m.get('source') or 'cache'}" if version else "no version active"
        if m.get("previous"):
            line += f", previous v{m['previous']}"
        if h and not h.get("ready"):
            line += f"; not loaded: {h.get('error') or 'loading'}"
        if m.get("error"):
            line += f"  [refused: {m['error']}]"
        click.echo(f"  {name}: {line}")

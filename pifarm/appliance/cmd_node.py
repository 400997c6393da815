"""Node commands: `pull`, `cache ls|verify|gc|rollback`, `node run`, `status`."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import click

from pifarm.errors import IntegrityError, NotFound, SourceError, UsageError

SPEC_RE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<channel>stable|canary)|@(?P<version>[0-9]+))?$")


def parse_pull_spec(spec: str) -> tuple[str, str | None, int | None]:
    """NAME, NAME:CHANNEL or NAME@VERSION."""
    from pifarm.signed.manifest import check_name

    m = SPEC_RE.match(spec)
    if not m:
        raise UsageError(f"cannot parse {spec!r}: use NAME, NAME:stable, NAME:canary or NAME@VERSION")
    check_name(m.group("name"))
    return m.group("name"), m.group("channel"), int(m.group("version")) if m.group("version") else None


def _config(config: str | None, *, registry: str | None = None, cache: str | None = None,
            state_dir: str | None = None, trust: tuple[str, ...] = (), channel: str | None = None,
            listen: str | None = None, endpoint_url: str | None = None):
    from pifarm.appliance.node import load_node_config

    node: dict[str, Any] = {"state_dir": state_dir, "channel": channel, "listen": listen,
                            "trusted_keys": list(trust) or None}
    s3: dict[str, Any] = {"endpoint_url": endpoint_url}
    if registry:
        if registry.startswith("s3://"):
            s3["url"] = registry
        elif registry.startswith(("http://", "https://")):
            node["aggregator"] = registry
        else:
            raise UsageError(f"--registry must be http(s)://host:port or s3://bucket/prefix, got {registry!r}")
    return load_node_config(config, overrides={"node": node, "cache": {"root": cache}, "s3": s3})


def _open_cache(cfg):
    from pifarm.cache.store import Cache

    return Cache(cfg.cache.root, cfg.cache.max_bytes)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pull(cfg, spec: str, *, retry_for: float = 0.0, quiet: bool = False, echo=click.echo):
    """`pifarm pull`, reusable by the demo: returns the `Installed` record."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from pifarm.appliance.node import trusted_keys
    from pifarm.cache.nodestate import read_state
    from pifarm.initiator.chain import build_sources, close_all, default_specs
    from pifarm.initiator.http_source import tls_context
    from pifarm.initiator.metadata import AggregatorClient
    from pifarm.initiator.s3_source import S3Store
    from pifarm.initiator.settings import SourceContext
    from pifarm.initiator.versions import Documents, install_version, pick

    name, channel, version = parse_pull_spec(spec)
    if not cfg.node.aggregator and not cfg.s3.url:
        raise UsageError("no registry: pass --registry http(s)://aggregator:port or --registry s3://bucket/prefix")
    trusted = trusted_keys(cfg.node.trusted_keys)
    cache = _open_cache(cfg)
    tls = tls_context(cfg.node.tls_ca, cfg.node.tls_cert, cfg.node.tls_key)
    docs = Documents(AggregatorClient(cfg.node.aggregator, tls=tls) if cfg.node.aggregator else None,
                     S3Store(cfg.s3) if cfg.s3.url else None)
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
             f"{_human(done.fetched)} fetched in {secs:.1f}s, {len(done.manifest.files)} file(s), now active"
             + (f"; previous v{done.previous.version}" if done.previous else ""))
    return done


def register(cli: click.Group) -> None:
    cfg_opt = click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="PIFARM_NODE_CONFIG",
                           help="node.toml (default: none; every key also via PIFARM_SECTION_KEY).")
    cache_opt = click.option("--cache", "cache_dir", default=None, help="Cache directory ([cache] root).")
    trust_opt = click.option("--trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
                             help="Registry public key (signing.pub) to trust; repeatable.")

    @cli.command("pull")
    @click.argument("spec")
    @click.option("--registry", default=None, help="http(s)://aggregator:port or s3://bucket/prefix.")
    @cache_opt
    @cfg_opt
    @trust_opt
    @click.option("--endpoint-url", default=None, help="S3 endpoint (e.g. SeaweedFS) for s3:// registries.")
    @click.option("--retry-for", type=float, default=0.0, show_default=True,
                  help="Keep retrying (and resuming) for this many seconds when every source fails.")
    @click.option("-q", "--quiet", is_flag=True)
    def pull_cmd(spec, registry, cache_dir, config, trust, endpoint_url, retry_for, quiet):
        """Pull NAME[:CHANNEL|@VERSION], verify every byte, and make it active in the cache."""
        cfg = _config(config, registry=registry, cache=cache_dir, trust=trust, endpoint_url=endpoint_url)
        pull(cfg, spec, retry_for=retry_for, quiet=quiet)

    @cli.group("cache")
    def cache_group():
        """Inspect and maintain the node's model cache."""

    @cache_group.command("ls")
    @cache_opt
    @cfg_opt
    @click.option("--json", "as_json", is_flag=True)
    def cache_ls(cache_dir, config, as_json):
        """Models, their active/previous/prefetched versions, and the bytes held."""
        cfg = _config(config, cache=cache_dir)
        cache = _open_cache(cfg)
        rows = []
        for name in cache.layout.models():
            row: dict[str, Any] = {"name": name}
            for which in ("active", "previous", "prefetched"):
                v = cache.layout.read_ref(name, which)
                row[which] = v.version if v else None
            act = cache.layout.read_ref(name, "active")
            row["bytes"] = cache.manifest(name, act.version).total_size if act else 0
            rows.append(row)
        blobs = cache.blobs()
        total = {"blobs": len(blobs), "bytes": sum(b.size for b in blobs), "max_bytes": cache.max_bytes,
                 "pinned_bytes": sum(b.size for b in blobs if b.digest in cache.pinned())}
        if as_json:
            click.echo(json.dumps({"root": str(cache.root), "models": rows, **total}, indent=1))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"cache {cache.root}")
        for col in ("model", "active", "previous", "prefetched", "size"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], *(str(r[k]) if r[k] is not None else "-" for k in ("active", "previous", "prefetched")),
                      _human(r["bytes"]))
        Console().print(t)
        budget = _human(cache.max_bytes) if cache.max_bytes else "unlimited"
        click.echo(f"{total['blobs']} blobs, {_human(total['bytes'])} ({_human(total['pinned_bytes'])} pinned), budget {budget}")

    @cache_group.command("verify")
    @cache_opt
    @cfg_opt
    def cache_verify(cache_dir, config):
        """Re-hash every blob; damaged ones are quarantined and the exit code is 1."""
        cfg = _config(config, cache=cache_dir)
        cache = _open_cache(cfg)
        rep = cache.verify_all()
        for msg in rep.damaged:
            click.echo(f"damaged: {msg}", err=True)
        broken = [r for r in cache.recover().dropped_refs]
        if rep.damaged or broken:
            raise IntegrityError(f"cache {cache.root}: {len(rep.damaged)} of {rep.checked} blobs damaged (quarantined); "
                                 f"{len(broken)} ref(s) dropped; run `pifarm pull` or `pifarm node run` to re-fetch")
        click.echo(f"cache {cache.root}: {rep.checked} blobs, {_human(rep.bytes)}, all verified")

    @cache_group.command("gc")
    @cache_opt
    @cfg_opt
    def cache_gc(cache_dir, config):
        """Delete blobs and manifests no active/previous/prefetched ref needs."""
        cfg = _config(config, cache=cache_dir)
        rep = _open_cache(cfg).gc()
        click.echo(f"removed {rep.removed_blobs} blobs ({_human(rep.freed_bytes)}), {rep.removed_manifests} manifests, "
                   f"{rep.removed_tmp} temp files")

    @cache_group.command("rollback")
    @click.argument("name")
    @cache_opt
    @cfg_opt
    def cache_rollback(name, cache_dir, config):
        """Swap NAME's active and previous versions, without the network."""
        cfg = _config(config, cache=cache_dir)
        v = _open_cache(cfg).rollback(name)
        click.echo(f"{name}: v{v.version} active again")

    @cli.group("node")
    def node_group():
        """The Pi node daemon."""

    @node_group.command("run")
    @click.option("--aggregator", default=None, help="http(s)://aggregator:port ([node] aggregator).")
    @cfg_opt
    @cache_opt
    @click.option("--state-dir", default=None, help="Where node.json lives ([node] state_dir).")
    @click.option("--channel", type=click.Choice(["stable", "canary"]), default=None)
    @click.option("--listen", default=None, help="HOST:PORT of the inference server ([node] listen).")
    @trust_opt
    @click.option("--no-serve", is_flag=True, help="Only keep the cache current; start no inference server.")
    def node_run(aggregator, config, cache_dir, state_dir, channel, listen, trust, no_serve):
        """Follow the registry, keep the cache verified and current, and serve inference."""
        from pifarm.appliance.node import parse_listen, run_node

        cfg = _config(config, registry=aggregator, cache=cache_dir, state_dir=state_dir, trust=trust,
                      channel=channel, listen=listen)
        if not cfg.node.aggregator and not cfg.s3.url:
            raise UsageError("pass --aggregator URL (or set [node] aggregator / [s3] url in the config)")
        parse_listen(cfg.node.listen)
        run_node(cfg, serve=not no_serve)

    @cli.command("status")
    @click.option("--state-dir", default=None, help="Where node.json lives ([node] state_dir).")
    @cfg_opt
    @click.option("--json", "as_json", is_flag=True)
    def status(state_dir, config, as_json):
        """What this node serves, from where, and whether it is degraded."""
        from pifarm.cache.nodestate import STATE_NAME, read_state

        cfg = _config(config, state_dir=state_dir)
        st = read_state(cfg.node.state_dir)
        if st is None:
            raise NotFound(f"no node state at {Path(cfg.node.state_dir) / STATE_NAME}; is `pifarm node run` running "
                           f"with this --state-dir?")
        if as_json:
            click.echo(json.dumps(st.to_json(), indent=1, sort_keys=True))
            return
        mode = f"DEGRADED since {st.degraded_since}: {st.degraded_reason}" if st.degraded else "ok"
        click.echo(f"node: {mode}; channel {st.channel}; snapshot revision {st.revision}; updated {st.updated}")
        click.echo("paths: " + ", ".join(f"{k}={v}" for k, v in sorted(st.paths.items())) +
                   (f" (live: {st.live_path})" if st.live_path else ""))
        if st.last_error:
            click.echo(f"last error: {st.last_error}")
        for name, m in sorted(st.models.items()):
            prev = f", previous v{m['previous']}" if m.get("previous") else ""
            err = f"  [{m['error']}]" if m.get("error") else ""
            click.echo(f"  {name}: v{m.get('version')} from {m.get('source', '?')}{prev}{err}")

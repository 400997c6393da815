"""`pifarm cache ls|verify|gc|rollback`: the node's model cache, without the network."""

from __future__ import annotations

from typing import Any

import click

from pifarm.appliance.cli._node import cache_option, config_option, human, node_config, open_cache
from pifarm.appliance.cli._output import echo_json
from pifarm.errors import IntegrityError


@click.group("cache")
def cache() -> None:
    """Inspect and maintain the node's model cache."""


@cache.command("ls")
@cache_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def cache_ls(cache_dir, config, as_json):
    """Models, their active/previous/prefetched versions, and the bytes held."""
    cfg = node_config(config, cache=cache_dir)
    cache = open_cache(cfg, read_only=True)
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
    from pifarm.cache import owner

    live = owner.live_description(cache.root)  # a running node's budget wins over this shell's config
    if live is not None and "max_bytes" in live:
        cache.max_bytes = live["max_bytes"]
        src = f"the running node's, pid {live['pid']}: {live.get('budget_from', '?')}"
    elif live is not None:
        src = f"unknown: a node (pid {live['pid']}) owns this cache; this shell's config says"
    else:
        src = f"from {cfg.origin}" if cache.max_bytes else "none set in " + cfg.origin
    budget_text = f"{human(cache.max_bytes) if cache.max_bytes else 'unlimited'} ({src})"
    total = {"blobs": len(blobs), "bytes": sum(b.size for b in blobs), "max_bytes": cache.max_bytes,
             "pinned_bytes": sum(b.size for b in blobs if b.digest in cache.pinned()), "budget": budget_text}
    if as_json:
        echo_json({"root": str(cache.root), "models": rows, **total}, indent=1)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"cache {cache.root}")
    for col in ("model", "active", "previous", "prefetched", "size"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], *(str(r[k]) if r[k] is not None else "-" for k in ("active", "previous", "prefetched")),
                  human(r["bytes"]))
    Console().print(t)
    click.echo(f"{total['blobs']} blobs, {human(total['bytes'])} ({human(total['pinned_bytes'])} pinned), "
               f"budget {total['budget']}")


@cache.command("verify")
@cache_option
@config_option
def cache_verify(cache_dir, config):
    """Re-hash every blob; damaged ones are quarantined and the exit code is 1."""
    cfg = node_config(config, cache=cache_dir)
    cache = open_cache(cfg, refuse_live="its scrub already re-hashes every blob (`[cache] scrub_interval`); "
                                        "stop it first to verify by hand")
    rep = cache.verify_all()
    for msg in rep.damaged:
        click.echo(f"damaged: {msg}", err=True)
    broken = [r for r in cache.recover().dropped_refs]
    if rep.damaged or broken:
        raise IntegrityError(f"cache {cache.root}: {len(rep.damaged)} of {rep.checked} blobs damaged (quarantined); "
                             f"{len(broken)} ref(s) dropped; run `pifarm pull` or `pifarm node run` to re-fetch")
    click.echo(f"cache {cache.root}: {rep.checked} blobs, {human(rep.bytes)}, all verified")


@cache.command("gc")
@cache_option
@config_option
def cache_gc(cache_dir, config):
    """Delete blobs and manifests no active/previous/prefetched ref needs."""
    cfg = node_config(config, cache=cache_dir)
    rep = open_cache(cfg, refuse_live="it collects its own cache; stop it first to collect by hand").gc()
    click.echo(f"removed {rep.removed_blobs} blobs ({human(rep.freed_bytes)}), {rep.removed_manifests} manifests, "
               f"{rep.removed_tmp} temp files")


@cache.command("rollback")
@click.argument("name")
@cache_option
@config_option
def cache_rollback(name, cache_dir, config):
    """Swap NAME's active and previous versions, without the network."""
    cfg = node_config(config, cache=cache_dir)
    v = open_cache(cfg, refuse_live=(
        f"its watcher keeps {name} on what its channel names, so a local swap would be undone; roll the channel "
        f"back on the aggregator (`pifarm rollback {name} --channel CHANNEL`) or stop the node first")).rollback(name)
    click.echo(f"{name}: v{v.version} active again")

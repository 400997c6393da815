"""What the node's commands share: their `--config`, `--cache`, `--trust` options and the node
config they load (node.toml through the one loader, with these flags on top)."""

from __future__ import annotations

from typing import Any

import click

from pifarm.errors import UsageError

config_option = click.option(
    "--config", type=click.Path(dir_okay=False), default=None,
    help="node.toml (default: $PIFARM_CONFIG, else /etc/pifarm/node.toml if present; every key also via "
         "PIFARM_SECTION_KEY).")
cache_option = click.option("--cache", "cache_dir", default=None, help="Cache directory ([cache] root).")
trust_option = click.option("--trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
                            help="Registry public key (signing.pub) to trust; repeatable.")


def node_config(config: str | None, *, registry: str | None = None, cache: str | None = None,
                state_dir: str | None = None, trust: tuple[str, ...] = (), channel: str | None = None,
                listen: str | None = None, endpoint_url: str | None = None):
    """The node config with the command's flags laid over file and environment."""
    from pifarm.appliance.config import load_node_config

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


def open_cache(cfg, *, read_only: bool = False, refuse_live: str | None = None):
    """The cache of `cfg`. read_only: look without creating or repairing anything (safe beside a
    running node). refuse_live: the command changes what a running node serves, so it is refused
    (with this reason) while a `pifarm node run` owns the cache. Otherwise a live node's cache is
    opened without start-up recovery: repairs are the owner's job."""
    from pifarm.cache import owner
    from pifarm.cache.store import Cache
    from pifarm.errors import Conflict

    if read_only:
        return Cache(cfg.cache.root, cfg.cache.max_bytes, read_only=True)
    pid = owner.holder(cfg.cache.root)
    if pid is not None and refuse_live:
        raise Conflict(f"cache {cfg.cache.root} is owned by a running `pifarm node run` (pid {pid}): {refuse_live}")
    return Cache(cfg.cache.root, cfg.cache.max_bytes, recover=pid is None)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

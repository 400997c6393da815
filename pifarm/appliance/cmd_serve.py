"""`pifarm serve`: the KServe V2 inference server over a node cache; `pifarm sample-model`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pifarm.errors import ConfigError, UsageError

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def load_settings(config: str | None, environ=None, overrides: dict | None = None):
    """The [inference] section of a config file (other sections, e.g. a node config's, are ignored)."""
    from pifarm.appliance.config import SERVE_SECTIONS, build_section, read_toml

    doc, origin = read_toml(config)
    table = doc.get("inference", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [inference] must be a table")
    return build_section(SERVE_SECTIONS["inference"], "inference", table, origin=origin,
                         environ=os.environ if environ is None else environ, overrides=overrides)


def register(cli: click.Group) -> None:
    @cli.command("serve")
    @click.option("--cache", "cache", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="The node's model cache directory.")
    @click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Directory of node.json (degraded flag and revision shown in /health).")
    @click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to listen on.")
    @click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML file with an [inference] section.")
    @click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime"]), default=None,
                  help="TFLite runtime (default: [inference] runtime, else auto).")
    def serve_cmd(cache: Path, state_dir: Path | None, listen: str, config: str | None, runtime: str | None) -> None:
        """Serve the cache's active model versions over KServe V2 (also /health, /metrics)."""
        from pifarm.inference.server import serve

        host, port = parse_listen(listen)
        if not cache.is_dir():
            raise ConfigError(f"cache directory {cache} does not exist; pass the node's cache with --cache")
        settings = load_settings(config, overrides={"runtime": runtime})

        def ready(h: str, p: int) -> None:
            click.echo(f"pifarm: serving KServe V2 on http://{h}:{p} (cache {cache})", err=True)

        serve(settings, cache, state_dir, host, port, on_ready=ready)

    @cli.command("sample-model")
    @click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--kind", type=click.Choice(["linear", "nobatch", "large"]), default="linear", show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    def sample_model_cmd(out: Path, kind: str, seed: int) -> None:
        """Write a tiny valid TFLite model (y = x*W + b), deterministic for a seed."""
        from pifarm.appliance.samplemodel import write_sample

        p = write_sample(out, kind, seed)
        click.echo(f"{p} ({p.stat().st_size} bytes, {kind}, seed {seed})")

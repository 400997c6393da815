"""`pifarm serve`: the KServe V2 inference server alone, over a node cache; `pifarm sample-model`."""

from __future__ import annotations

from pathlib import Path

import click

from pifarm.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"


@click.command("serve")
@click.option("--cache", "cache", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The node's model cache directory.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of node.json (degraded flag and revision shown in /health).")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to listen on.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="Node config whose [inference] section is used (other sections are not read).")
@click.option("--runtime", type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime"]), default=None,
              help="TFLite runtime (default: [inference] runtime, else auto).")
def serve(cache: Path, state_dir: Path | None, listen: str, config: str | None, runtime: str | None) -> None:
    """Serve the cache's active model versions over KServe V2 (also /health, /metrics)."""
    from pifarm.appliance import threaddump
    from pifarm.appliance.config import load_node_config
    from pifarm.inference.server import serve as serve_cache
    from pifarm.listen import parse_listen

    host, port = parse_listen(listen, key="--listen")
    if not cache.is_dir():
        raise ConfigError(f"cache directory {cache} does not exist; pass the node's cache with --cache")
    cfg = load_node_config(config, only=("inference",), overrides={"inference": {"runtime": runtime}})

    def ready(h: str, p: int) -> None:
        click.echo(f"pifarm: serving KServe V2 on http://{h}:{p} (cache {cache})", err=True)

    threaddump.install()  # `kill -USR1` dumps every thread's stack (as `node run` does)
    serve_cache(cfg.inference, cache, state_dir, host, port, on_ready=ready)


@click.command("sample-model")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["linear", "nobatch", "large"]), default="linear", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def sample_model(out: Path, kind: str, seed: int) -> None:
    """Write a tiny valid TFLite model (y = x*W + b), deterministic for a seed."""
    from pifarm.appliance.demo.samplemodel import write_sample

    p = write_sample(out, kind, seed)
    click.echo(f"{p} ({p.stat().st_size} bytes, {kind}, seed {seed})")

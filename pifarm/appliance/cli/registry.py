"""The aggregator's commands: `aggregator run`, `publish`, `models`, `show`, `promote`, `rollback`,
`retire`, `keys generate`. Each talks to a running aggregator (`--registry URL`) or, with
`--data-dir D`, opens the registry directly when no aggregator runs on that directory.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from pifarm.appliance.cli._output import echo_json
from pifarm.appliance.cli._secrets import secret_options
from pifarm.errors import Conflict, PifarmError, UsageError

REGISTRY_ENV = "PIFARM_REGISTRY"
TOKEN_ENV = "PIFARM_API_TOKEN"


def _registry_options(f):
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Work on this aggregator data dir directly (no aggregator running on it).")(f)
    f = secret_options("token", TOKEN_ENV, "Bearer token for writes.")(f)
    f = click.option("--registry", "url", envvar=REGISTRY_ENV, default=None,
                     help=f"Aggregator URL, e.g. http://agg:8470 (env {REGISTRY_ENV}).")(f)
    f = click.option("--config", type=click.Path(dir_okay=False), default=None,
                     help="Aggregator config (for --data-dir: store settings).")(f)
    return f


class _Direct:
    """The registry opened in-process, offering the client's method names."""

    def __init__(self, registry):
        self.r = registry

    def models(self) -> dict[str, Any]:
        return self.r.models()

    def model(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.r.model(name)}

    def manifest_document(self, name: str, version: int) -> dict[str, Any]:
        return self.r.manifest_document(name, version)

    def publish(self, path, name, channel=None, labels=None, *, format=None, progress=None) -> dict[str, Any]:
        manifest, doc = self.r.publish(path, name, channel, labels, format=format, progress=progress)
        return {"name": manifest.name, "version": manifest.version, "manifest_digest": manifest.digest,
                "revision": self.r.revision, "document": doc}

    def promote(self, name, version, channel) -> dict[str, Any]:
        return {"name": name, "channel": channel, "version": version, "revision": self.r.promote(name, version, channel)}

    def rollback(self, name, channel) -> dict[str, Any]:
        return {"name": name, "channel": channel, "version": self.r.rollback(name, channel), "revision": self.r.revision}

    def retire(self, name, version) -> dict[str, Any]:
        return {"name": name, "version": version, "retired": True, "revision": self.r.retire(name, version)}


@contextmanager
def _open(url: str | None, token: str | None, data_dir: str | None, config: str | None,
          readonly: bool = False) -> Iterator[Any]:
    if url and data_dir:
        raise UsageError("give either --registry URL or --data-dir D, not both")
    if data_dir:
        from pifarm.appliance.config import load_aggregator_config
        from pifarm.registry.service import Registry

        cfg = load_aggregator_config(config, data_dir=data_dir)
        reg = Registry.open(data_dir, cfg, readonly=readonly)
        try:
            yield _Direct(reg)
        finally:
            reg.close()
        return
    if not url:
        raise UsageError(f"no registry given: use --registry URL (or {REGISTRY_ENV}) or --data-dir D")
    from pifarm.client.http import AggregatorClient

    with AggregatorClient(url, token) as c:
        yield c


def _parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"label {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    # on stderr: stdout carries only the result (a transient bar still left a blank line there)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True, console=Console(stderr=True)) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, advance: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task({"hash": "hashing", "upload": "uploading"}.get(phase, phase), total=total)
            bar.update(tasks[phase], advance=advance)

        yield update


@click.group("aggregator")
def aggregator() -> None:
    """The aggregator daemon."""


@aggregator.command("run")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="aggregator.toml")
@click.option("--data-dir", default=None, help="Data dir (keys, database, filesystem store).")
@click.option("--listen", default=None, help="HOST:PORT to serve the API on.")
def run_cmd(config, data_dir, listen) -> None:
    """Serve the registry API (creates keys and token in an empty data dir)."""
    from pifarm.appliance.aggregator import run

    if run(config, data_dir, listen):
        raise PifarmError("aggregator stopped before it served (see the log above)")


@aggregator.command("rebuild-db")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="aggregator.toml")
@click.option("--data-dir", default=None, help="Data dir (keys, database).")
def rebuild_db_cmd(config, data_dir) -> None:
    """Drop the local database and rebuild it from the shared S3 bucket (stop the aggregator first)."""
    from pathlib import Path

    from pifarm.appliance.config import load_aggregator_config
    from pifarm.registry.datadir import lock_data_dir
    from pifarm.registry.service import Registry

    cfg = load_aggregator_config(config, data_dir=data_dir)
    d = Path(cfg.registry.data_dir)
    if cfg.store.kind != "s3":
        raise PifarmError(f"[store] url {cfg.store.url or '(filesystem store)'} is not an S3 bucket: with the "
                          "filesystem store the database is the only copy of the registry, nothing to rebuild from")
    import os

    os.close(lock_data_dir(d))  # refuse while an aggregator holds it, before moving anything
    names = ("registry.db", "registry.db-wal", "registry.db-shm")
    for name in names:  # kept aside until the rebuild succeeded
        if (d / name).exists():
            (d / name).replace(d / f"{name}.before-rebuild")
    try:
        with Registry.open(d, cfg) as reg:
            revision = reg.rebuild_from_bucket()
            versions = len(reg.served_versions())
    except BaseException:
        for name in names:
            (d / name).unlink(missing_ok=True)
            if (d / f"{name}.before-rebuild").exists():
                (d / f"{name}.before-rebuild").replace(d / name)
        raise
    for name in names:
        (d / f"{name}.before-rebuild").unlink(missing_ok=True)
    click.echo(f"rebuilt {d / 'registry.db'} from {reg.store.location}: revision {revision}, {versions} live versions")


@click.command("publish")
@click.argument("path", type=click.Path())
@click.option("--name", required=True, help="Model name ([a-z0-9][a-z0-9._-]{0,63}).")
@click.option("--channel", type=click.Choice(["canary", "stable"]), default=None)
@click.option("--label", "labels", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["tflite", "raw"]), default=None,
              help="Default: tflite when a .tflite file is present, else raw.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_registry_options
def publish(path, name, channel, labels, fmt, as_json, url, token, data_dir, config) -> None:
    """Publish a file or directory as the next version of a model."""
    labels_d = _parse_labels(labels)
    with _open(url, token, data_dir, config) as reg, _progress_bar(not as_json) as progress:
        out = reg.publish(path, name, channel, labels_d, format=fmt, progress=progress)
    if as_json:
        echo_json(out, indent=2, sort_keys=True)
    else:
        ch = f", {channel}" if channel else ""
        click.echo(f"published {out['name']} version {out['version']}{ch} ({out['manifest_digest']}) "
                   f"revision {out['revision']}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True)
@_registry_options
def models(as_json, url, token, data_dir, config) -> None:
    """List models, their channels and live versions."""
    with _open(url, token, data_dir, config, readonly=True) as reg:
        models = reg.models()
    if as_json:
        echo_json(models, indent=2, sort_keys=True)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("model", "stable", "canary", "versions", "latest size")
    for name, m in sorted(models.items()):
        ch = m.get("channels", {})
        vs = m.get("versions", [])
        t.add_row(name, str(ch.get("stable", "-")), str(ch.get("canary", "-")),
                  ", ".join(str(v["version"]) for v in vs), str(vs[-1]["size"]) if vs else "-")
    Console().print(t)


@click.command("show")
@click.argument("name")
@click.argument("version", type=int, required=False)
@_registry_options
def show(name, version, url, token, data_dir, config) -> None:
    """Show a model (or one version's signed manifest) as JSON."""
    with _open(url, token, data_dir, config, readonly=True) as reg:
        out = reg.manifest_document(name, version) if version is not None else reg.model(name)
    echo_json(out, indent=2, sort_keys=True)


@click.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--channel", type=click.Choice(["canary", "stable"]), required=True)
@_registry_options
def promote(name, version, channel, url, token, data_dir, config) -> None:
    """Point a channel at a version."""
    with _open(url, token, data_dir, config) as reg:
        out = reg.promote(name, version, channel)
    click.echo(f"{name} {channel} -> version {version} (revision {out['revision']})")


@click.command("rollback")
@click.argument("name")
@click.option("--channel", type=click.Choice(["canary", "stable"]), required=True)
@_registry_options
def rollback(name, channel, url, token, data_dir, config) -> None:
    """Point a channel back at its previous version."""
    with _open(url, token, data_dir, config) as reg:
        out = reg.rollback(name, channel)
    click.echo(f"{name} {channel} rolled back to version {out['version']} (revision {out['revision']})")


@click.command("retire")
@click.argument("name")
@click.argument("version", type=int)
@_registry_options
def retire(name, version, url, token, data_dir, config) -> None:
    """Stop offering a version; its blobs are collected once nothing refers to them."""
    with _open(url, token, data_dir, config) as reg:
        out = reg.retire(name, version)
    click.echo(f"{name} version {version} retired (revision {out['revision']})")


@click.group("keys")
def keys() -> None:
    """Signing keys."""


@keys.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for signing.key (0600) and signing.pub.")
def keys_generate(out_dir) -> None:
    """Write a new Ed25519 signing key pair (never overwrites an existing key)."""
    from pifarm.signed.signing import SigningKey

    key = SigningKey.generate()
    try:
        priv, pub = key.write(out_dir)
    except FileExistsError:
        raise Conflict(f"{Path(out_dir) / 'signing.key'} already exists; remove it first or pick another --out") from None
    except OSError as e:
        raise UsageError(f"cannot write keys to {out_dir}: {e.strerror or e}") from e
    click.echo(f"wrote {priv} (private, 0600) and {pub} (public); key id {key.keyid}")

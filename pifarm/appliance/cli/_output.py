"""Output helpers the command modules share (imported lazily so `--help` stays light)."""

from __future__ import annotations

from typing import Any

import click


def echo_json(obj: Any, **dumps_kw: Any) -> None:
    """Print `obj` as JSON (json is imported only by commands that print it)."""
    import json

    click.echo(json.dumps(obj, **dumps_kw))

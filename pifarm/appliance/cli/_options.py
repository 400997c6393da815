"""Options several command modules share."""

from __future__ import annotations

import click


def aggregator_data_dir_option(help_text: str):
    """--data-dir of the commands that work on the aggregator's files directly (no API)."""
    return click.option("--data-dir", default="/var/lib/pifarm/aggregator", show_default=True, help=help_text)

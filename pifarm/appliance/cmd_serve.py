"""Commands of one component (stub until its issue lands)."""

import click


def register(cli: click.Group) -> None:
    pass

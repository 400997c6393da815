"""Secrets reach pifarm from a file, stdin or the environment, not from argv: a command line is
readable by every local user in /proc/<pid>/cmdline and lands in shell history. The old
`--flag VALUE` forms still work, with a warning."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from pifarm.errors import UsageError


def secret_file_option(name: str, help: str):
    """`--<name>-file PATH` (`-` = stdin) for the secret parameter `<name>`."""
    return click.option(f"--{name}-file", f"{name.replace('-', '_')}_file", default=None, metavar="PATH",
                        help=f"{help} Read from PATH (- = stdin), never from the command line.")


def resolve(value: str | None, file: str | None, *, param: str, flag: str, file_flag: str, env: str = "") -> str | None:
    """The secret from `file` (or stdin), else `value` (warning when it came from argv)."""
    if file:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as e:
            raise UsageError(f"{file_flag} {file}: {e.strerror or e}") from e
        secret = text.strip()
        if not secret or "\n" in secret:
            raise UsageError(f"{file_flag} {file}: expected one line holding the secret")
        return secret
    if value is not None:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE:
            where = f"{file_flag} FILE (- for stdin)" + (f" or ${env}" if env else "")
            click.echo(f"warning: {flag} on the command line is visible to every local user (/proc/<pid>/cmdline); "
                       f"use {where}", err=True)
    return value

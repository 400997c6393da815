"""Secrets reach pifarm from a file, stdin or the environment, not from argv: a command line is
readable by every local user in /proc/<pid>/cmdline and lands in shell history. The old
`--flag VALUE` forms still work, with a warning."""

from __future__ import annotations

import functools
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


def secret_options(name: str, env: str, help: str, *, short: str | None = None):
    """`--<name> VALUE` (env `env`; warns on the command line) and `--<name>-file PATH|-` for a
    command whose function takes the secret as parameter `<name>` (dashes as underscores)."""
    param = name.replace("-", "_")

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kw):
            kw[param] = resolve(kw.get(param), kw.pop(f"{param}_file", None), param=param, flag=f"--{name}",
                                file_flag=f"--{name}-file", env=env)
            return f(*args, **kw)

        wrapper = secret_file_option(name, help)(wrapper)
        decls = [f"--{name}"] + ([short] if short else [])
        return click.option(*decls, param, envvar=env, default=None,
                            help=f"{help} (env {env}; on the command line it is visible to other users).")(wrapper)
    return decorate

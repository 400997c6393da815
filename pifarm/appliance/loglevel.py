"""Log levels: `pifarm --log-level LEVEL` (or -v/-vv) for any command, else a daemon's config key
(`[node] log_level`, `[registry] log_level`, default info: the lifecycle is logged at INFO), else
warning for the one-shot commands."""

from __future__ import annotations

import logging

LEVELS = ("debug", "info", "warning", "error")
_explicit = False


def configure(level: str | None, verbose: int) -> None:
    """The root command: an explicit --log-level or -v wins over any config key."""
    global _explicit
    if level:
        lvl = getattr(logging, level.upper())
    else:
        lvl = logging.WARNING - 10 * min(verbose, 2)
    _explicit = bool(level or verbose)
    logging.basicConfig(level=lvl, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if lvl > logging.DEBUG:  # one INFO line per HTTP request is noise; -vv / debug shows them
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def daemon(level: str) -> None:
    """A daemon's configured level, unless the command line chose one."""
    if not _explicit:
        logging.getLogger().setLevel(getattr(logging, level.upper()))
        quiet = logging.WARNING if level != "debug" else logging.NOTSET  # per-request lines only at debug
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(quiet)

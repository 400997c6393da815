"""One owner per cache and per state dir: an flock held by the node daemon for its lifetime.

    <cache root>/owner.lock     held by `pifarm node run` (holds its pid)
    <state dir>/owner.lock      the same, for node.json
    <cache root>/owner.json     what the owner runs with ({"pid", "max_bytes", "budget_from"}), so
                                `cache ls` shows the live budget, wherever it came from

A second daemon on the same directories is refused naming the first one's pid, like the
aggregator's `registry.lock`. Commands that only read (`cache ls`, `status`) never take it;
commands that would change a live cache (`cache gc|verify|rollback`) ask `holder()` first and
refuse while a daemon owns it. The lock dies with its process, so a crash never leaves it stale.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pifarm.errors import Conflict, ReadOnlyError

LOCK_NAME = "owner.lock"


def acquire(directory: str | os.PathLike, what: str) -> int:
    """Hold `directory`'s owner lock (fd returned; closing it releases). Conflict naming the holder."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
            raise ReadOnlyError(f"{what} {d} is not writable ({e.strerror}); fix its owner/permissions or "
                                f"choose another directory") from None
        raise ReadOnlyError(f"{what} {d}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise Conflict(f"{what} {d} is in use by another pifarm node (pid {pid or '?'}); stop it, or give this "
                       f"one its own --cache and --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder(directory: str | os.PathLike) -> int | None:
    """The pid of the live process owning `directory`, or None (never takes the lock for long)."""
    p = Path(directory) / LOCK_NAME
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(root: str | os.PathLike, *, max_bytes: int | None, budget_from: str) -> None:
    from pifarm.durable import atomic_write_json

    atomic_write_json(Path(root) / "owner.json", {"pid": os.getpid(), "max_bytes": max_bytes,
                                                  "budget_from": budget_from})


def live_description(root: str | os.PathLike) -> dict | None:
    """owner.json of the process owning the cache right now (None when no node runs on it)."""
    import json

    pid = holder(root)
    if pid is None:
        return None
    try:
        d = json.loads((Path(root) / "owner.json").read_text())
    except (OSError, ValueError):
        return {"pid": pid}
    return d if isinstance(d, dict) and d.get("pid") == pid else {"pid": pid}


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None

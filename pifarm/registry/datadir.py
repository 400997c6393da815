"""The aggregator data dir's own files: the single-writer lock and the API token.

    <data_dir>/registry.lock   flock held by the one process writing the registry (holds its pid)
    <data_dir>/api-token       bearer token for writes (0600), unless one is configured
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

from pifarm.durable import atomic_create
from pifarm.errors import ConfigError, Conflict
from pifarm.registry.settings import ApiSettings


def ensure_api_token(data_dir: str | os.PathLike, api: ApiSettings) -> str:
    """The write token: configured, read from token_file, or created in D/api-token (0600)."""
    if api.token:
        return api.token
    path = Path(api.token_file) if api.token_file else Path(data_dir) / "api-token"
    try:
        return path.read_text().strip() or _fail_token(path)
    except FileNotFoundError:
        if api.token_file:
            raise ConfigError(f"[api] token_file {path} does not exist") from None
    token = secrets.token_urlsafe(32)
    try:
        atomic_create(path, (token + "\n").encode(), 0o600)
    except FileExistsError:
        return path.read_text().strip()
    return token


def _fail_token(path: Path) -> str:
    raise ConfigError(f"API token file {path} is empty; delete it to have a new token generated")


def lock_data_dir(d: Path) -> int:
    """Hold the data dir's single-writer lock (released when the fd closes or the process dies)."""
    fd = os.open(d / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise Conflict(f"data dir {d} is in use by another pifarm process (pid {holder or '?'}); "
                       "stop it or go through its API with --registry") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

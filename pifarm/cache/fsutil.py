"""Durable small-file writes shared by the cache: fsync discipline and disk-full errors."""

from __future__ import annotations

import errno
from pathlib import Path

from pifarm.errors import ReadOnlyError
from pifarm import durable
from pifarm.durable import fsync_dir, write_all

__all__ = ["DISK_FULL", "DiskFullError", "atomic_write", "fsync_dir", "write_all"]

#: what a full (or quota-limited, or RLIMIT_FSIZE-limited) file system answers
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(ReadOnlyError):
    """The cache's file system ran out of space (or quota) during an install."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """The shared durable write, with the cache's meaning of its failures."""
    try:
        durable.atomic_write(path, data, mode)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(f"no space left to write {path}: free space or lower cache.max_bytes") from e
        raise ReadOnlyError(f"cannot write {path}: {e.strerror}") from e


"""Durable small-file writes shared by the cache: fsync discipline and disk-full errors."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from pifarm.errors import ReadOnlyError

#: what a full (or quota-limited, or RLIMIT_FSIZE-limited) file system answers
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(ReadOnlyError):
    """The cache's file system ran out of space (or quota) during an install."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """tmp + fsync + os.replace + fsync(dir): readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in DISK_FULL:
            raise DiskFullError(f"no space left to write {path}: free space or lower cache.max_bytes") from e
        raise ReadOnlyError(f"cannot write {path}: {e.strerror}") from e


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

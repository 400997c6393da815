"""Durable small-file writes, shared by every component that keeps state on disk.

A leaf package: imports nothing of pifarm, and anyone may import it.

`atomic_write` is the one way pifarm replaces a small file (`atomic_create` the one way it
creates one that must never be replaced): a process-unique temp file in the
same directory (exclusive create), fsync, os.replace, fsync the directory. Readers see the old
file or the new one, never a mix, and a crash leaves at most a dot-prefixed temp file behind.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range of a file to disk now, without waiting for it
    (Linux sync_file_range, SYNC_FILE_RANGE_WRITE): a large file written in pieces then reaches
    its final fsync with little left to write, instead of one burst at the end. Best effort: a
    no-op where the call is missing or refused."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _sync_file_range = fn
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


_sync_file_range = None


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644, *, suffix: str = ".tmp") -> Path:
    """Replace `path` with `data` atomically and durably; OSError propagates to the caller,
    which knows what a failure means for it (disk full in the cache, a refused config, ...).

    The file gets exactly `mode`, whatever the umask (a key is 0600 and a unit file 0644 whoever
    runs setup); the temp file has it from its creation, so a secret is never readable by others.
    `suffix` names the temp file for owners that sweep their own leftovers (the registry store)."""
    return _publish(Path(path), data, mode, suffix, os.replace)


def atomic_create(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """`atomic_write` that never replaces: FileExistsError when `path` exists (a signing key, a
    token: created once, complete or not at all, even when two processes race)."""
    return _publish(Path(path), data, mode, ".tmp", os.link)


def _publish(p: Path, data: bytes, mode: int, suffix: str, put) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.{uuid.uuid4().hex}{suffix}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        put(tmp, p)  # os.replace, or os.link (refuses an existing name)
        fsync_dir(p.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_json(path: str | os.PathLike, doc: Any, mode: int = 0o644, indent: int = 1) -> Path:
    return atomic_write(path, (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode(), mode)

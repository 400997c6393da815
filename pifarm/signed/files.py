"""What a publish of a local path contains: a file, or every file under a directory.

Symlinks are followed only while they stay inside the published directory, so a publish can
never read (and sign) a file the operator did not put under that directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pifarm.errors import NotFound, UsageError
from pifarm.signed.manifest import check_relpath

MAX_FILES = 10_000


@dataclass(frozen=True)
class LocalFile:
    relpath: str
    source: Path
    size: int


def collect_files(path: str | os.PathLike) -> list[LocalFile]:
    """The files a publish of `path` would sign, sorted by relative path."""
    p = Path(path)
    if not p.exists():
        raise NotFound(f"{p} does not exist")
    if p.is_file():
        return [LocalFile(check_relpath(p.name), p, p.stat().st_size)]
    if not p.is_dir():
        raise UsageError(f"{p} is neither a file nor a directory")
    root = p.resolve()
    out: list[LocalFile] = []
    seen_dirs = {root}

    def inside(target: Path) -> bool:
        return target == root or root in target.parents

    for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
        d = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            real = (d / name).resolve()
            if not inside(real):
                raise UsageError(f"{d / name} is a symlink leaving {p}; publish refuses files outside the directory")
            if real in seen_dirs:
                continue  # a link back into the tree: its files are published under their own path
            seen_dirs.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = d / name
            real = f.resolve()
            if not inside(real):
                raise UsageError(f"{f} is a symlink leaving {p}; publish refuses files outside the directory")
            if not real.is_file():
                raise UsageError(f"{f} is not a regular file (dangling link, socket or device?)")
            rel = f.relative_to(p).as_posix()
            try:
                check_relpath(rel)
            except UsageError as e:
                raise UsageError(f"{f}: {e}") from e
            out.append(LocalFile(rel, f, real.stat().st_size))
            if len(out) > MAX_FILES:
                raise UsageError(f"{p} holds more than {MAX_FILES} files; publish a smaller directory")
    if not out:
        raise UsageError(f"{p} contains no files to publish")
    return sorted(out, key=lambda x: x.relpath)

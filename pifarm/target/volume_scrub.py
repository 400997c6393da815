"""Re-verifying exported volumes, blob by blob, and repairing damaged ones in place.

The kernel target opens a volume read-write (nvmet has no read-only namespace in 6.1 or 6.12),
so an allowed host can write into it. Nodes verify every blob and never install a bad byte, but
a damaged volume silently costs them the NVMe path. So the aggregator re-reads every volume at a
bounded rate (like the node's cache scrub), and at once when a node reports one corrupt
(`POST /v1/volumes/{name}/{version}/corrupt`); a damaged volume is rebuilt from the store
(every blob verified) and written back *into the same file*: nvmet and the userspace target
keep it open, so a rename would go unseen by connected hosts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pifarm.errors import PifarmError
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier
from pifarm.volume.format import VolumeReader

log = logging.getLogger(__name__)

SUFFIX = ".vol"


@dataclass
class ScrubStats:
    bytes_read: int = 0
    volumes_checked: int = 0
    damaged: int = 0
    repaired: int = 0
    last_damage: dict[str, str] = field(default_factory=dict)  # volume file name -> what was wrong


def check_volume(path: Path, *, pace: Callable[[int], bool] = lambda n: True) -> list[str]:
    """What is wrong with a volume file ([] when every blob verifies). `pace(n)` is called after
    each n bytes read and returns False to stop early (shutdown)."""
    try:
        reader = VolumeReader.from_file(path)
    except PifarmError as e:
        return [f"unreadable: {e}"]
    bad = []
    with reader:
        for digest, (off, size) in sorted(reader._extents.items(), key=lambda kv: kv[1][0]):
            v = StreamVerifier(BlobRef(digest, size), source=f"{path}@{off}")
            try:
                for chunk in reader.chunks(digest, chunk=CHUNK):
                    v.update(chunk)
                    if not pace(len(chunk)):
                        return bad
                v.finish()
            except PifarmError as e:
                bad.append(f"blob {digest}: {e}")
    return bad


def rewrite_in_place(path: Path, fresh: Path) -> None:
    """Copy `fresh` (a verified rebuild) over `path` without replacing the inode, then fsync."""
    with open(fresh, "rb") as src, open(path, "r+b") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
        dst.truncate(src.tell())
        dst.flush()
        os.fsync(dst.fileno())


class VolumeScrubber:
    """`run(stop)` in a thread: one pass over `volume_dir` every `interval` seconds at `rate`
    bytes/s, reported volumes first. `repair(path)` rebuilds one volume (the aggregator wires it
    to the registry); it is called only for a volume found damaged."""

    def __init__(self, volume_dir: str | os.PathLike, repair: Callable[[Path], None], *, rate: int = 32 << 20,
                 interval: float = 86400.0):
        self.volume_dir = Path(volume_dir)
        self.repair = repair
        self.rate = max(int(rate), 1 << 16)
        self.interval = interval
        self.stats = ScrubStats()
        self._urgent: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def report(self, file_name: str) -> bool:
        """A node says this volume is corrupt: check it next (once, however often it is said)."""
        if not file_name.endswith(SUFFIX) or "/" in file_name or not (self.volume_dir / file_name).is_file():
            return False
        with self._lock:
            if file_name not in self._urgent:
                self._urgent.append(file_name)
        self._wake.set()
        return True

    def _pacer(self, stop: threading.Event) -> Callable[[int], bool]:
        start, done = time.monotonic(), [0]

        def pace(n: int) -> bool:
            done[0] += n
            self.stats.bytes_read += n
            ahead = done[0] / self.rate - (time.monotonic() - start)
            return not (ahead > 0 and stop.wait(ahead)) and not stop.is_set()
        return pace

    def scrub(self, path: Path, stop: threading.Event) -> bool:
        """Check one volume; repair it if damaged. True when it was damaged."""
        bad = check_volume(path, pace=self._pacer(stop))
        self.stats.volumes_checked += 1
        if not bad or stop.is_set():
            return False
        self.stats.damaged += 1
        self.stats.last_damage[path.name] = bad[0]
        log.error("volume %s is damaged (%d problems, first: %s); rebuilding it from the store", path, len(bad), bad[0])
        try:
            self.repair(path)
            self.stats.repaired += 1
            log.warning("volume %s rebuilt", path)
        except Exception as e:  # the store may be down: the next pass tries again
            log.error("rebuilding volume %s failed (will retry): %s", path, e)
        return True

    def _next_urgent(self) -> str | None:
        with self._lock:
            return self._urgent.pop(0) if self._urgent else None

    def run(self, stop: threading.Event) -> None:
        last_pass = float("-inf")  # the first pass starts at once (paced like every other)
        while not stop.is_set():
            name = self._next_urgent()
            if name is not None:
                if (self.volume_dir / name).is_file():
                    self.scrub(self.volume_dir / name, stop)
                continue
            if time.monotonic() - last_pass >= self.interval:
                for p in sorted(self.volume_dir.glob(f"*{SUFFIX}")) if self.volume_dir.is_dir() else ():
                    if stop.is_set():
                        return
                    self.scrub(p, stop)
                    while (name := self._next_urgent()) is not None:  # reports jump the queue
                        if (self.volume_dir / name).is_file():
                            self.scrub(self.volume_dir / name, stop)
                last_pass = time.monotonic()
            self._wake.wait(max(1.0, min(self.interval, 60.0)))
            self._wake.clear()

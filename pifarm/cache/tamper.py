"""Tamper watch: notice blobs changed or deleted behind the cache's back (watchdog/inotify).

A blob event is ignored only when the file looks exactly as this process last left it (inode,
size, ctime: ctime cannot be set from user space, so a write followed by `touch -d` still
shows). Anything else is re-hashed; a damaged blob is quarantined, a missing one reported, and
`on_damage(digest)` lets the node fetch it again. The periodic scrub catches what inotify
cannot see (bit rot, writes while pifarm was down).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable

from watchdog.events import (FileAttribEvent, FileClosedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from pifarm.cache.store import HEX_RE, Cache
from pifarm.errors import IntegrityError
from pifarm.signed.integrity import BlobRef, make_digest, verify_file

log = logging.getLogger(__name__)


# Only what can change or remove a blob is asked of the kernel: reads (open, close-without-write)
# of blobs by the loader, the scrub or anyone else must not wake this process (issue 19). Created
# (a rename into blobs/) is the cache's own install.
BLOB_CHANGES = [FileDeletedEvent, FileMovedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent]


class _Events(FileSystemEventHandler):
    def __init__(self, q: "queue.Queue[tuple[str, bool]]"):
        self._q = q

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write", "created"):
            return
        # a move *out of* blobs/ (src) is a deletion; a move *into* it (dest) is our own install
        name = os.path.basename(os.fsdecode(event.src_path))
        if HEX_RE.match(name):
            # The cache never opens an installed blob for writing, so a close-after-write is
            # always foreign: re-hash it even if inode/size/ctime look like ours (ctime ticks
            # are coarse, so a write right after our own touch can leave them unchanged).
            self._q.put((name, event.event_type == "closed"))


class TamperWatch:
    def __init__(self, cache: Cache, on_damage: Callable[[str, str], None] | None = None):
        self.cache = cache
        self.on_damage = on_damage  # (digest, what happened)
        self.detected: list[tuple[str, str]] = []
        self._q: "queue.Queue[tuple[str, bool]]" = queue.Queue()
        self._observer: Observer | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        self._observer = Observer()
        self._observer.name = "tamper-observer"
        self._observer.schedule(_Events(self._q), str(self.cache.layout.blobs), recursive=False,
                                event_filter=BLOB_CHANGES)
        for e in self._observer.emitters:
            e.name = "tamper-inotify"  # named, so a thread dump says whose it is
        self._observer.start()
        self._worker = threading.Thread(target=self._run, name="tamper-watch", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(("", False))
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._worker is not None:
            self._worker.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            hexd, written = self._q.get()
            if not hexd:
                continue
            try:
                self.check(hexd, force=written)
            except Exception:  # one odd file must not end the watch
                log.exception("tamper check of %s failed", hexd)

    def check(self, hexd: str, force: bool = False) -> str | None:
        """Examine one blob now; returns what was wrong (None if it is fine)."""
        path = self.cache.layout.blobs / hexd
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if self.cache.is_own_state(hexd, st) and not (force and st is not None):
            return None
        digest = make_digest(hexd)
        if st is None:
            what = "deleted"
        else:
            size = self.cache.referenced_sizes().get(digest, st.st_size)
            try:
                verify_file(path, BlobRef(digest, size))
                self.cache._remember(path)  # intact (e.g. touched by another process): trust this state
                return None
            except FileNotFoundError:
                what = "deleted"
            except IntegrityError as e:
                what = f"modified: {e}"
                self.cache.quarantine(digest, what)
        log.error("blob %s %s behind the cache's back", digest, what)
        self.cache.metrics.tampered.inc()
        self.detected.append((digest, what))
        if self.on_damage is not None:
            self.on_damage(digest, what)
        return what

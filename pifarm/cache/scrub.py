"""Scrub: re-hash every blob at rest and quarantine the damaged ones.

Unlimited, it uses `verify_file` (the same rules as a stream, all cores). With a byte rate it
hashes in chunks through `StreamVerifier` and sleeps between them, so a periodic scrub on a Pi
never starves inference of I/O.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from pifarm.errors import IntegrityError
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier, verify_file

if TYPE_CHECKING:
    from pifarm.cache.store import Cache, ScrubReport


def _verify_throttled(path: os.PathLike, ref: BlobRef, rate: float, stop: threading.Event | None) -> None:
    v = StreamVerifier(ref, str(path))
    t0, done = time.monotonic(), 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(CHUNK)
            if not buf:
                break
            v.update(buf)
            done += len(buf)
            ahead = done / rate - (time.monotonic() - t0)
            if ahead > 0:
                if stop is not None and stop.wait(min(ahead, 5.0)):
                    return
                elif stop is None:
                    time.sleep(min(ahead, 5.0))
    v.finish()


def scrub(cache: "Cache", bytes_per_second: float | None = None, stop: threading.Event | None = None) -> "ScrubReport":
    from pifarm.cache.store import ScrubReport

    sizes = cache.referenced_sizes()
    damaged: list[str] = []
    digests: list[str] = []
    checked = nbytes = 0
    for b in sorted(cache.blobs(), key=lambda b: b.digest):
        if stop is not None and stop.is_set():
            break
        path = cache.layout.blob(b.digest)
        ref = BlobRef(b.digest, sizes.get(b.digest, b.size))
        try:
            if bytes_per_second:
                _verify_throttled(path, ref, bytes_per_second, stop)
            else:
                verify_file(path, ref)
        except FileNotFoundError:
            continue  # evicted meanwhile
        except IntegrityError as e:
            damaged.append(str(e))
            digests.append(b.digest)
            cache.metrics.scrub_damaged.inc()
            cache.quarantine(b.digest, str(e))
        checked += 1
        nbytes += b.size
    return ScrubReport(checked, nbytes, tuple(damaged), tuple(digests))

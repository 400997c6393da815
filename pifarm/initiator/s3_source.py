"""Blobs and signed documents straight from the registry's S3 mirror (through `pifarm.s3`).

Layout under `s3://bucket/prefix/`: `pifarm.s3.layout`. Blobs come as ranged GETs of
`part_size`, `concurrency` in flight, yielded in order so the cache can hash and write
sequentially.

Resumable twice over: across processes, the cache keeps the written prefix and asks for the rest;
within one process, every part's received bytes are held (bounded: the parts in the window) so a
pull interrupted by an outage re-requests only what never arrived.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from pifarm.errors import NotFound, SourceError, SourceTimeout
from pifarm.s3.bucket import Bucket, Missing, make_client
from pifarm.s3.layout import SNAPSHOT_KEY, blob_key, manifest_key
from pifarm.initiator.settings import S3Options, S3Settings, SourceContext, SourceSpec
from pifarm.signed.integrity import CHUNK, BlobRef

MAX_DOCUMENT = 64 * 2**20  # a snapshot of many models is large, but never this large


def client_for(s: S3Settings) -> Any:
    return make_client(endpoint_url=s.endpoint_url, region=s.region, connect_timeout=s.connect_timeout,
                       read_timeout=s.read_timeout, max_pool_connections=s.concurrency + 4)


def bucket_for(s: S3Settings, client: Any = None, name: str = "s3") -> Bucket:
    if not s.url:
        raise SourceError("S3 is not configured: set [s3] url = \"s3://bucket/prefix\" (PIFARM_S3_URL)", name)
    return Bucket(client if client is not None else client_for(s), s.url, source=name)


class S3Documents:
    """The registry's signed documents in its S3 mirror (blobs: S3Source)."""

    def __init__(self, settings: S3Settings, client: Any = None, name: str = "s3"):
        self.bucket = bucket_for(settings, client, name)
        self.name = name

    def get_json(self, key: str) -> Any:
        what = f"GET {self.bucket.location}{key}"
        body = self.bucket.get(key, what, limit=MAX_DOCUMENT)
        try:
            return json.loads(body)
        except ValueError as e:
            raise SourceError(f"{what}: not JSON ({e})", self.name) from e

    def snapshot(self) -> Any:
        return self.get_json(SNAPSHOT_KEY)

    def manifest(self, name: str, version: int) -> Any:
        try:
            return self.get_json(manifest_key(name, version))
        except Missing as e:
            raise NotFound(f"{name} v{version} has no manifest in {self.bucket.location}") from e


@dataclasses.dataclass
class _Held:
    """One part's bytes [base, base + len(buf)); `filled` of them have arrived.

    Preallocated, so the consumer can stream views of the filled prefix while a worker
    writes further on. An abandoned attempt's worker may still be filling it: `lock` makes
    a retry's worker wait for it, `cond` wakes the consumer on progress or when a worker ends.
    """

    base: int
    buf: bytearray
    filled: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)


class S3Source:
    def __init__(self, settings: S3Settings, deadline: float = 300.0, client: Any = None, name: str = "s3"):
        self.bucket = bucket_for(settings, client, name)
        self.name = name
        self.settings = settings
        self.deadline = deadline
        self.received = 0  # bytes off the wire (tests and benchmarks check resume with it)
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()

    def _held_for(self, ref: BlobRef, part: int, want_from: int, end: int) -> _Held:
        """The part's buffer, reusing what an earlier attempt received when it covers `want_from`."""
        with self._lock:
            h = self._held.get((ref.digest, part))
            if h is None or not h.base <= want_from <= h.base + h.filled or h.base + len(h.buf) != end:
                h = self._held[(ref.digest, part)] = _Held(want_from, bytearray(end - want_from))
            return h

    def _fill(self, ref: BlobRef, h: _Held) -> None:
        try:
            with h.lock:
                self._fill_locked(ref, h)
        finally:
            with h.cond:
                h.cond.notify_all()

    def _fill_locked(self, ref: BlobRef, h: _Held) -> None:
        key = blob_key(ref.digest)
        what = f"GET {self.bucket.location}{key}"
        size = len(h.buf)
        while h.filled < size:
            a, end = h.base + h.filled, h.base + size - 1
            before = h.filled
            with self.bucket.mapped(f"{what} bytes {a}-{end}"):
                body = self.bucket.open(key, a, end + 1, f"{what} bytes {a}-{end}")
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        pos, n = h.filled, len(chunk)
                        if pos + n > size:
                            raise SourceError(f"{what}: server sent more than the range asked for", self.name)
                        h.buf[pos:pos + n] = chunk
                        with h.cond:
                            h.filled = pos + n
                            h.cond.notify_all()
                        with self._lock:
                            self.received += n
                finally:
                    body.close()
            if h.filled == before:
                raise SourceError(f"{what}: empty response for bytes {a}-{end} (object shorter than the manifest?)", self.name)

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes | memoryview]:
        if start >= ref.size:
            return
        with self._lock:  # hold only this blob's parts: memory stays bounded by the window
            for k in [k for k in self._held if k[0] != ref.digest]:
                del self._held[k]
        ps = self.settings.part_size
        parts = list(range(start // ps, (ref.size + ps - 1) // ps))
        stop_at = time.monotonic() + self.deadline
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="s3-part")
        window: list[tuple[int, int, _Held, Future]] = []

        def submit(i: int) -> None:
            frm, end = max(start, parts[i] * ps), min(ref.size, (parts[i] + 1) * ps)
            h = self._held_for(ref, parts[i], frm, end)
            window.append((parts[i], frm, h, pool.submit(self._fill, ref, h)))

        try:
            nxt = 0
            while nxt < len(parts) and nxt < self.settings.concurrency:
                submit(nxt)
                nxt += 1
            while window:
                part, frm, h, fut = window.pop(0)
                pos = frm - h.base
                while pos < len(h.buf):  # stream the head part as its bytes arrive
                    with h.cond:
                        while h.filled <= pos and not fut.done():
                            left = stop_at - time.monotonic()
                            if left <= 0:
                                raise SourceTimeout(f"blob {ref.digest}: deadline of {self.deadline:g}s passed", self.name)
                            h.cond.wait(min(left, 1.0))
                        filled = h.filled
                    if filled > pos:
                        yield memoryview(h.buf)[pos:filled]
                        pos = filled
                    elif fut.done():
                        fut.result()  # the worker's SourceError
                        raise SourceError(f"blob {ref.digest}: part at {h.base} ended short", self.name)
                if nxt < len(parts):
                    submit(nxt)
                    nxt += 1
                with self._lock:
                    self._held.pop((ref.digest, part), None)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._held.clear()


def settings_for(spec: SourceSpec, base: S3Settings) -> S3Settings:
    """[s3] settings with this [[sources]] entry's url and options laid over them."""
    over: dict[str, Any] = {}
    if spec.url:
        over["url"] = spec.url
    opts = spec.typed_options(S3Options)
    over.update({k: v for k, v in dataclasses.asdict(opts).items() if v is not None})
    try:
        return dataclasses.replace(base, **over)
    except (TypeError, ValueError) as e:
        raise SourceError(f"[[sources]] s3: {e}", "s3") from e


def make_source(spec: SourceSpec, ctx: SourceContext) -> S3Source:
    return S3Source(settings_for(spec, ctx.s3), spec.deadline)

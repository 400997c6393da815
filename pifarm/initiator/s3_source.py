"""Blobs and signed documents straight from the registry's S3 mirror (boto3).

Layout under `s3://bucket/prefix/`: `blobs/blake3/<hex>`, `models/<name>/<version>.json`,
`snapshot.json`. Blobs come as ranged GETs of `part_size`, `concurrency` in flight, yielded in
order so the cache can hash and write sequentially.

Resumable twice over: across processes, the cache keeps the written prefix and asks for the rest;
within one process, every part's received bytes are held (bounded: the parts in the window) so a
pull interrupted by an outage re-requests only what never arrived.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterator

from pifarm.errors import NotFound, SourceError, SourceTimeout
from pifarm.initiator.settings import S3Settings, SourceContext, SourceSpec
from pifarm.registry.integrity import CHUNK, BlobRef, digest_hex
from pifarm.registry.manifest import check_name

MAX_DOCUMENT = 64 * 2**20  # a snapshot of many models is large, but never this large


def make_client(s: S3Settings):
    import boto3
    from botocore.config import Config

    cfg = Config(
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=s.concurrency + 4,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=s.endpoint_url or None, region_name=s.region or None, config=cfg
    )


@contextlib.contextmanager
def s3_errors(what: str, source: str = "s3") -> Iterator[None]:
    """Every botocore/urllib3 failure becomes a SourceError (or SourceTimeout) naming `what`."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, NoCredentialsError,
                                     ReadTimeoutError)

    try:
        yield
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            raise NotFoundAtSource(f"{what}: not in the bucket (404)", source) from e
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise SourceError(f"{what}: access denied ({code}); check the AWS_* credentials", source) from e
        raise SourceError(f"{what}: S3 error {code}", source) from e
    except (ConnectTimeoutError, ReadTimeoutError) as e:
        raise SourceTimeout(f"{what}: timed out ({e})", source) from e
    except NoCredentialsError as e:
        raise SourceError(f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", source) from e
    except BotoCoreError as e:
        raise SourceError(f"{what}: {type(e).__name__}: {e}", source) from e
    except OSError as e:  # urllib3 read errors surface as OSError subclasses mid-body
        raise SourceError(f"{what}: connection failed: {e}", source) from e
    except Exception as e:
        if type(e).__module__.startswith("urllib3"):
            raise SourceError(f"{what}: {type(e).__name__}: {e}", source) from e
        raise


class NotFoundAtSource(SourceError):
    """The source answered but does not hold the object."""


class S3Store:
    """Read-only view of the registry's S3 layout (documents; blobs via S3Source)."""

    def __init__(self, settings: S3Settings, client: Any = None, name: str = "s3"):
        if not settings.url:
            raise SourceError("S3 is not configured: set [s3] url = \"s3://bucket/prefix\" (PIFARM_S3_URL)", name)
        self.settings = settings
        self.name = name
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self.client = client if client is not None else make_client(settings)

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}blobs/blake3/{digest_hex(digest)}"

    def get_json(self, key: str) -> Any:
        what = f"s3://{self.bucket}/{key}"
        with s3_errors(f"GET {what}", self.name):
            r = self.client.get_object(Bucket=self.bucket, Key=key)
            if int(r.get("ContentLength") or 0) > MAX_DOCUMENT:
                raise SourceError(f"GET {what}: document larger than {MAX_DOCUMENT} bytes", self.name)
            body = r["Body"].read(MAX_DOCUMENT + 1)
        try:
            return json.loads(body)
        except ValueError as e:
            raise SourceError(f"GET {what}: not JSON ({e})", self.name) from e

    def snapshot(self) -> Any:
        return self.get_json(f"{self.prefix}snapshot.json")

    def manifest(self, name: str, version: int) -> Any:
        try:
            return self.get_json(f"{self.prefix}models/{check_name(name)}/{int(version)}.json")
        except NotFoundAtSource as e:
            raise NotFound(f"{name} v{version} has no manifest in s3://{self.bucket}/{self.prefix}") from e


@dataclasses.dataclass
class _Held:
    base: int  # absolute offset of buf[0]
    buf: bytearray
    # an abandoned attempt's worker may still be appending; a retry waits for it
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class S3Source:
    def __init__(self, settings: S3Settings, deadline: float = 300.0, client: Any = None, name: str = "s3"):
        self.store = S3Store(settings, client, name)
        self.name = name
        self.settings = settings
        self.deadline = deadline
        self.received = 0  # bytes off the wire (tests and benchmarks check resume with it)
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()

    def _part(self, ref: BlobRef, part: int, want_from: int, end: int) -> _Held:
        """Bytes [want_from, end) of the blob, continuing whatever an earlier attempt received."""
        key = (ref.digest, part)
        with self._lock:
            h = self._held.get(key)
            if h is None:
                h = self._held[key] = _Held(want_from, bytearray())
        with h.lock:
            if h.base > want_from or h.base + len(h.buf) < want_from:
                h.base, h.buf = want_from, bytearray()
            return self._fill(ref, h, end)

    def _fill(self, ref: BlobRef, h: _Held, end: int) -> _Held:
        what = f"GET s3://{self.store.bucket}/{self.store.blob_key(ref.digest)}"
        while h.base + len(h.buf) < end:
            a = h.base + len(h.buf)
            before = len(h.buf)
            with s3_errors(f"{what} bytes {a}-{end - 1}", self.name):
                r = self.store.client.get_object(
                    Bucket=self.store.bucket, Key=self.store.blob_key(ref.digest), Range=f"bytes={a}-{end - 1}"
                )
                body = r["Body"]
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        h.buf += chunk
                        with self._lock:
                            self.received += len(chunk)
                        if h.base + len(h.buf) > end:
                            raise SourceError(f"{what}: server sent more than the range asked for", self.name)
                finally:
                    body.close()
            if len(h.buf) == before:
                raise SourceError(f"{what}: empty response for bytes {a}-{end - 1} (object shorter than the manifest?)", self.name)
        return h

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
        window: list[tuple[int, int, Future]] = []

        def submit(i: int) -> None:
            frm, end = max(start, parts[i] * ps), min(ref.size, (parts[i] + 1) * ps)
            window.append((parts[i], frm, pool.submit(self._part, ref, parts[i], frm, end)))

        try:
            nxt = 0
            while nxt < len(parts) and nxt < self.settings.concurrency:
                submit(nxt)
                nxt += 1
            while window:
                part, frm, fut = window.pop(0)
                try:
                    h = fut.result(timeout=max(0.0, stop_at - time.monotonic()))
                except FutureTimeout:
                    raise SourceTimeout(f"blob {ref.digest}: deadline of {self.deadline:g}s passed", self.name) from None
                if nxt < len(parts):
                    submit(nxt)
                    nxt += 1
                yield memoryview(h.buf)[frm - h.base:]
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
    names = {f.name for f in dataclasses.fields(S3Settings)}
    for k, v in spec.options.items():
        if k not in names:
            raise SourceError(f"[[sources]] s3: unknown option {k!r}; known: {', '.join(sorted(names))}", "s3")
        over[k] = v
    try:
        return dataclasses.replace(base, **over)
    except (TypeError, ValueError) as e:
        raise SourceError(f"[[sources]] s3: {e}", "s3") from e


def make_source(spec: SourceSpec, ctx: SourceContext) -> S3Source:
    return S3Source(settings_for(spec, ctx.s3), spec.deadline)

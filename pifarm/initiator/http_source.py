"""Blobs from the aggregator over HTTP: `GET {url}/v1/blobs/{digest}`, with `Range` to resume.

The aggregator is not trusted more than any other source: the cache verifies every byte.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from typing import Iterator

import httpx

from pifarm.errors import ConfigError, SourceError, SourceTimeout
from pifarm.initiator.settings import HttpOptions, SourceContext, SourceSpec
from pifarm.signed.integrity import CHUNK, BlobRef


@contextlib.contextmanager
def http_errors(what: str, source: str = "http") -> Iterator[None]:
    """Translate httpx failures at the edge: timeouts vs everything else the transport does."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise SourceTimeout(f"{what}: timed out ({type(e).__name__})", source) from e
    except httpx.HTTPError as e:
        raise SourceError(f"{what}: {type(e).__name__}: {e}", source) from e


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """The client TLS context for an https:// aggregator: its CA and, for mTLS, our certificate."""
    if not (ca or cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise ConfigError(f"TLS file {e.filename} does not exist ([node] tls_ca / tls_cert / tls_key)") from e
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"TLS files ca={ca!r} cert={cert!r} key={key!r} are not usable: {e}") from e
    return ctx


class HttpSource:
    def __init__(self, base_url: str, deadline: float = 60.0, connect_timeout: float = 2.0, name: str = "http",
                 tls: ssl.SSLContext | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise SourceError(f"http source needs an http(s):// URL, got {base_url!r}", name)
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.deadline = deadline
        self.received = 0  # bytes off the wire, for tests and benchmarks
        self._client = httpx.Client(
            timeout=httpx.Timeout(min(deadline, 30.0), connect=connect_timeout), follow_redirects=False,
            verify=tls if tls is not None else True,
        )

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        if start >= ref.size:
            return
        url = f"{self.base_url}/v1/blobs/{ref.digest}"
        headers = {"Range": f"bytes={start}-"} if start else {}
        what = f"GET {url}"
        end = time.monotonic() + self.deadline
        with http_errors(what, self.name):
            with self._client.stream("GET", url, headers=headers) as r:
                if r.status_code == 404:
                    raise SourceError(f"{what}: 404, the aggregator does not have this blob", self.name)
                if r.status_code not in (200, 206):
                    raise SourceError(f"{what}: HTTP {r.status_code}", self.name)
                skip = start if (start and r.status_code == 200) else 0  # server ignored Range
                for chunk in r.iter_bytes(CHUNK):
                    if time.monotonic() > end:
                        raise SourceTimeout(f"{what}: deadline of {self.deadline:g}s passed", self.name)
                    self.received += len(chunk)
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    yield chunk

    def close(self) -> None:
        self._client.close()


def make_source(spec: SourceSpec, ctx: SourceContext) -> HttpSource:
    url = spec.url or ctx.aggregator_url
    if not url:
        raise SourceError("[[sources]] http: no url and no aggregator URL configured (--aggregator)", "http")
    opts = spec.typed_options(HttpOptions)
    return HttpSource(url, spec.deadline, opts.connect_timeout, tls=ctx.tls)

"""Blobs from the aggregator over HTTP: `GET {url}/v1/blobs/{digest}`, with `Range` to resume.

The aggregator is not trusted more than any other source: the cache verifies every byte.
"""

from __future__ import annotations

import ssl
import time
from typing import Iterator

from pifarm.client.http import AggregatorClient
from pifarm.errors import SourceError, SourceTimeout
from pifarm.initiator.settings import HttpOptions, SourceContext, SourceSpec
from pifarm.signed.integrity import CHUNK, BlobRef


class HttpSource:
    def __init__(self, base_url: str, deadline: float = 60.0, connect_timeout: float = 2.0, name: str = "http",
                 tls: ssl.SSLContext | None = None):
        self.name = name
        self.deadline = deadline
        self.received = 0  # bytes off the wire, for tests and benchmarks
        self._client = AggregatorClient(base_url, timeout=min(deadline, 30.0), connect_timeout=connect_timeout,
                                        tls=tls, source=name, bad_url=SourceError)
        self.base_url = self._client.url

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        if start >= ref.size:
            return
        what = f"GET {self.base_url}/v1/blobs/{ref.digest}"
        end = time.monotonic() + self.deadline
        with self._client.blob(ref.digest, start) as r:
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

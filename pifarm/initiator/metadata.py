"""Where a node reads the registry's signed documents: the aggregator's API, or S3 directly.

Both return documents exactly as signed; the caller verifies them (`verify_snapshot`,
`verify_manifest`) the same way whatever delivered them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from pifarm.errors import NotFound, SourceError
from pifarm.initiator.http_source import http_errors
from pifarm.signed.manifest import check_name


@dataclass(frozen=True)
class Poll:
    document: Any | None  # None: no change within `wait` (HTTP 304)
    revision: int | None
    reset: bool = False  # the registry is behind what we asked for (X-Pifarm-Reset)


class AggregatorClient:
    """`GET /v1/metadata?since=N&wait=S` long-poll and `GET /v1/models/{name}/versions/{v}`."""

    name = "http"

    def __init__(self, url: str, connect_timeout: float = 1.5, tls: ssl.SSLContext | None = None):
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"aggregator URL must be http(s)://host:port, got {url!r}", "http")
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, connect=connect_timeout),
                                    verify=tls if tls is not None else True)

    def poll(self, since: int, wait: int) -> Poll:
        url = f"{self.url}/v1/metadata"
        # the server may hold the request `wait` seconds plus jitter up to wait/16
        timeout = httpx.Timeout(wait + wait / 16 + 10.0, connect=self._client.timeout.connect)
        with http_errors(f"GET {url}", self.name):
            r = self._client.get(url, params={"since": since, "wait": wait}, timeout=timeout)
        rev = r.headers.get("X-Pifarm-Revision")
        revision = int(rev) if rev and rev.lstrip("-").isdigit() else None
        if r.status_code == 304:
            return Poll(None, revision)
        if r.status_code != 200:
            raise SourceError(f"GET {url}: HTTP {r.status_code}: {r.text[:200]}", self.name)
        try:
            doc = r.json()
        except ValueError as e:
            raise SourceError(f"GET {url}: response is not JSON", self.name) from e
        return Poll(doc, revision, r.headers.get("X-Pifarm-Reset") == "1")

    def manifest(self, name: str, version: int) -> Any:
        url = f"{self.url}/v1/models/{check_name(name)}/versions/{int(version)}"
        with http_errors(f"GET {url}", self.name):
            r = self._client.get(url)
        if r.status_code == 404:
            raise NotFound(f"the aggregator has no {name} v{version}")
        if r.status_code != 200:
            raise SourceError(f"GET {url}: HTTP {r.status_code}", self.name)
        try:
            doc = r.json()
        except ValueError as e:
            raise SourceError(f"GET {url}: response is not JSON", self.name) from e
        # accept the bare signed document or one wrapped as {"manifest": {...}}
        if isinstance(doc, dict) and "signed" not in doc and isinstance(doc.get("manifest"), dict):
            doc = doc["manifest"]
        return doc

    def close(self) -> None:
        self._client.close()
